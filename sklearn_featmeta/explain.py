"""What did the support-set edits do? Summaries, concept alignment and a plot.

The paper checks HSFM by decoding support embeddings before and after editing
and seeing the spurious attribute change. Without a decoder, ask which named
directions the edits moved along: a text encoder gives them for free
(``encode("a tweet") - encode("a movie review")``), and random directions give
the noise level to compare with.

All functions read a fitted estimator's ``support_init_``, ``support_edited_``
and ``support_labels_``; none needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._text import text_table

__all__ = [
    "ConceptAlignment",
    "EditSummary",
    "concept_alignment",
    "edit_summary",
    "has_edits",
    "plot_edits",
]


def has_edits(estimator) -> bool:
    """Whether a fitted ``MetaAugmentedHeadClassifier`` kept any support edit to explain.

    False with ``outer_steps=0`` (the default makes none and stores no
    support), and where every run kept its unedited head (``kept_edits_``).
    """
    check_is_fitted(estimator)
    if not hasattr(estimator, "support_edited_"):  # no edits made: no support is stored
        return False
    return not np.array_equal(estimator.support_init_, estimator.support_edited_)


def _edits(estimator):
    if not has_edits(estimator):
        raise ValueError(
            "The fitted model kept no support edits (outer_steps=0, the default, makes none; "
            "with edits, every run kept its unedited head: kept_edits_ is all False), so "
            "there is nothing to explain. Fit with outer_steps > 0 to edit the support."
        )
    before = np.asarray(estimator.support_init_, dtype=np.float64)
    after = np.asarray(estimator.support_edited_, dtype=np.float64)
    return before, after, np.asarray(estimator.support_labels_)


def _table(row_names, column_names, values, title, fmt="{:+.3f}"):
    rows = [
        [name, *(fmt.format(v) for v in row)] for name, row in zip(row_names, values, strict=True)
    ]
    return "\n".join(text_table([title, *column_names], rows))


@dataclass(frozen=True)
class EditSummary:
    """Per class: how far and in how many directions the support set moved.

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
    n_rows : ndarray of shape (n_classes,)
        Support rows of the class.
    mean_edit_norm : ndarray of shape (n_classes,)
        Norm of the class's mean edit vector (how far its support mean moved).
    relative_edit_norm : ndarray of shape (n_classes,)
        Mean per-row edit norm divided by the data's scale: the root-mean-square
        distance of the unedited support rows from their mean.
    top_direction_share : ndarray of shape (n_classes, n_components)
        Cumulative share of the edit energy (sum of squared edit norms) in the
        top 1, 2, ... principal directions of the class's edits.
    """

    classes: np.ndarray
    n_rows: np.ndarray
    mean_edit_norm: np.ndarray
    relative_edit_norm: np.ndarray
    top_direction_share: np.ndarray

    def __str__(self) -> str:
        k = self.top_direction_share.shape[1]
        columns = ["rows", "mean edit", "row edit / scale"] + [
            f"top-{i + 1} share" for i in range(k)
        ]
        values = np.column_stack(
            [self.n_rows, self.mean_edit_norm, self.relative_edit_norm, self.top_direction_share]
        )
        return _table(self.classes, columns, values, "class", fmt="{:.3g}")


def edit_summary(estimator, n_components: int = 3) -> EditSummary:
    """Per class: size of the mean edit, size of the row edits, and their dimensionality.

    Parameters
    ----------
    estimator : fitted MetaAugmentedHeadClassifier
    n_components : int, default=3
        Number of principal directions in ``top_direction_share``.

    Returns
    -------
    summary : EditSummary
        ``print(summary)`` shows a table.
    """
    before, after, labels = _edits(estimator)
    edits = after - before
    scale = np.sqrt(np.mean(np.sum((before - before.mean(0)) ** 2, axis=1)))
    classes = np.unique(labels)
    n_rows, mean_norm, relative, shares = [], [], [], []
    for label in classes:
        class_edits = edits[labels == label]
        n_rows.append(class_edits.shape[0])
        mean_norm.append(np.linalg.norm(class_edits.mean(0)))
        relative.append(np.linalg.norm(class_edits, axis=1).mean() / max(scale, 1e-300))
        singular = np.linalg.svd(class_edits, compute_uv=False) ** 2
        energy = np.cumsum(singular) / max(singular.sum(), 1e-300)
        shares.append(
            np.pad(
                energy[:n_components], (0, max(0, n_components - energy.size)), constant_values=1.0
            )
        )
    return EditSummary(
        classes, np.array(n_rows), np.array(mean_norm), np.array(relative), np.array(shares)
    )


@dataclass(frozen=True)
class ConceptAlignment:
    """How each class's edits align with named concept directions.

    Attributes
    ----------
    concept_names : list of str
    classes : ndarray of shape (n_classes,)
    cosine : ndarray of shape (n_classes, n_concepts)
        Cosine between the class's mean edit vector and each concept direction.
    shift : ndarray of shape (n_classes, n_concepts)
        Move of the class's support mean along the (unit) concept direction,
        in standard deviations of the reference data along that direction.
    z_score : ndarray of shape (n_classes, n_concepts)
        ``shift`` standardised against the same measure along ``n_random``
        random unit directions: ``(shift - mean) / std`` of the random shifts.
        Around 0 (|z| < 2 or so): indistinguishable from noise.
    random_shift_mean, random_shift_std : ndarray of shape (n_classes,)
        The random directions' shifts, per class.
    """

    concept_names: list
    classes: np.ndarray
    cosine: np.ndarray
    shift: np.ndarray
    z_score: np.ndarray
    random_shift_mean: np.ndarray
    random_shift_std: np.ndarray

    def __str__(self) -> str:
        blocks = []
        for title, values in [
            ("cosine", self.cosine),
            ("shift (sd)", self.shift),
            ("z-score", self.z_score),
        ]:
            blocks.append(
                _table([f"class {c}" for c in self.classes], self.concept_names, values, title)
            )
        return "\n\n".join(blocks)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-friendly): field -> class -> concept -> value."""
        out = {}
        for field in ("cosine", "shift", "z_score"):
            values = getattr(self, field)
            out[field] = {
                str(c): dict(zip(self.concept_names, map(float, row), strict=True))
                for c, row in zip(self.classes, values, strict=True)
            }
        return out


def _concept_matrix(concepts, n_features):
    if isinstance(concepts, dict):
        names = [str(name) for name in concepts]
        matrix = np.asarray([np.asarray(v, dtype=np.float64).ravel() for v in concepts.values()])
    elif isinstance(concepts, tuple) and len(concepts) == 2:
        names = [str(name) for name in concepts[0]]
        matrix = np.atleast_2d(np.asarray(concepts[1], dtype=np.float64))
    else:
        raise ValueError("concepts must be a dict {name: vector} or a tuple (names, matrix).")
    if matrix.ndim != 2 or matrix.shape != (len(names), n_features):
        raise ValueError(
            f"concepts must hold {len(names)} vectors of {n_features} features (the embedding "
            f"size); got an array of shape {matrix.shape}."
        )
    norms = np.linalg.norm(matrix, axis=1)
    if not np.all(np.isfinite(matrix)) or np.any(norms == 0):
        raise ValueError("every concept direction must be finite and non-zero.")
    return names, matrix / norms[:, None]


def _shifts(before, after, labels, classes, directions, reference):
    """Move of each class's support mean along unit ``directions``, in reference sds."""
    spread = (reference - reference.mean(0)) @ directions.T
    sd = np.maximum(spread.std(0), 1e-12)
    moves = np.array(
        [(after[labels == c].mean(0) - before[labels == c].mean(0)) @ directions.T for c in classes]
    )
    return moves / sd


def concept_alignment(
    estimator, concepts, *, X=None, n_random: int = 200, random_state=0
) -> ConceptAlignment:
    """Alignment of the support edits with named directions, against random ones.

    Parameters
    ----------
    estimator : fitted MetaAugmentedHeadClassifier
    concepts : dict {name: vector} or tuple (names, matrix)
        Directions in the embedding space (normalised here), e.g.
        ``encode("a tweet") - encode("a movie review")``.
    X : array-like of shape (n_samples, n_features), default=None
        Data whose spread along a direction is the unit of ``shift`` (e.g. the
        training embeddings). Default: the unedited support set, a sample of
        the fitting data.
    n_random : int, default=200
        Random unit directions for ``z_score`` (at least 200).
    random_state : int, RandomState instance or None, default=0

    Returns
    -------
    alignment : ConceptAlignment
        ``print(alignment)`` shows the three tables.
    """
    if n_random < 200:
        raise ValueError(
            f"n_random must be at least 200 for a usable noise estimate; got {n_random}."
        )
    before, after, labels = _edits(estimator)
    names, directions = _concept_matrix(concepts, before.shape[1])
    reference = before if X is None else np.asarray(X, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[1] != before.shape[1]:
        raise ValueError(f"X must have {before.shape[1]} features; got shape {reference.shape}.")
    classes = np.unique(labels)
    mean_edits = np.array([(after - before)[labels == c].mean(0) for c in classes])
    edit_norms = np.maximum(np.linalg.norm(mean_edits, axis=1, keepdims=True), 1e-300)
    cosine = (mean_edits / edit_norms) @ directions.T
    shift = _shifts(before, after, labels, classes, directions, reference)
    rng = check_random_state(random_state)
    random_directions = rng.standard_normal((n_random, before.shape[1]))
    random_directions /= np.linalg.norm(random_directions, axis=1, keepdims=True)
    random_shift = _shifts(before, after, labels, classes, random_directions, reference)
    mean, std = random_shift.mean(1), np.maximum(random_shift.std(1), 1e-300)
    return ConceptAlignment(
        concept_names=names,
        classes=classes,
        cosine=cosine,
        shift=shift,
        z_score=(shift - mean[:, None]) / std[:, None],
        random_shift_mean=mean,
        random_shift_std=std,
    )


def plot_edits(
    estimator, concepts=None, ax=None, *, max_arrows_per_class: int = 200, random_state=0
):
    """The support set before and after editing, with an arrow per row, coloured by class.

    Parameters
    ----------
    estimator : fitted MetaAugmentedHeadClassifier
    concepts : dict or tuple (names, matrix), default=None
        Axes: the first two concept directions (normalised). None: the top two
        principal directions of the edits.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when None.
    max_arrows_per_class : int, default=200
        Rows drawn per class (a random subset when a class has more).
    random_state : int, RandomState instance or None, default=0
        Picks the subset.

    Returns
    -------
    figure : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    before, after, labels = _edits(estimator)
    if concepts is None:
        _, _, components = np.linalg.svd(
            after - before - (after - before).mean(0), full_matrices=False
        )
        axes_names, directions = ["edit direction 1", "edit direction 2"], components[:2]
    else:
        names, directions = _concept_matrix(concepts, before.shape[1])
        if len(names) < 2:
            raise ValueError("plot_edits needs two concept directions for its two axes.")
        axes_names, directions = names[:2], directions[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    rng = check_random_state(random_state)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(np.unique(labels)):
        rows = np.flatnonzero(labels == label)
        if rows.size > max_arrows_per_class:
            rows = np.sort(rng.choice(rows, max_arrows_per_class, replace=False))
        start, end = before[rows] @ directions.T, after[rows] @ directions.T
        colour = colours[i % len(colours)]
        ax.scatter(start[:, 0], start[:, 1], s=8, color=colour, alpha=0.35)
        shift = end - start
        ax.quiver(
            *start.T[:2],
            *shift.T[:2],
            angles="xy",
            scale_units="xy",
            scale=1,
            color=colour,
            width=0.003,
            label=f"class {label}",
        )
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.set_title("support set edits (dots: before; arrows: to after)")
    ax.legend(loc="best", fontsize=8)
    return ax.figure
