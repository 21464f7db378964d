"""MetaAugmentedHeadClassifier: the scikit-learn face of HSFM.

Validation, the pool / held-out split and the fitted attributes live here; the
numerics live in :mod:`sklearn_featmeta._core` (imported inside ``fit`` so that
a fitted model predicts and unpickles without torch).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ._groups import (
    as_group_array,
    cell_codes,
    cross_fitting_folds,
    draw_keys,
    drop_zero_weights,
    encode_groups,
    split_pool_and_heldout,
    stratified_split,
    take_by_weight,
)
from ._linear import (
    LinearHeadMixin,
    binary_to_softmax_head,
    predicted_indices,
    softmax_to_fitted_head,
)
from ._preprocessing import content_hashes, isotropic_factor, standardized, weighted_moments
from ._presets import PAPER_PRESETS
from ._threads import auto_threads, fit_threads

AUTO_WHITENING_RIDGE = 0.1
"""Ridge of the whitened geometry that ``whitening_ridge="auto"`` weighs against standardisation."""

MIN_HELDOUT_ROWS_PER_GROUP = 5
"""Below this many held-out rows in a (class, group) cell, a fit warns that selection is noise."""

FLAT_HEAD_SPREAD = 1e-3
"""A head whose held-out logits vary by less than this is flat: its predictions are noise."""

WHITENING_COVARIANCE_BUDGET = 2**34
"""Most rows x features^2 the whitening covariance is computed from (then a content-keyed draw).

A preconditioner needs a fair estimate of the covariance, not an exact one.
Below the budget (about half a second of arithmetic on 2 cores) every pool
row counts; above it, ``budget / features^2`` rows, at least eight per
feature: on a 200,000 x 1024 pool the full product took 3.7 s of a 25 s fit.
No benchmark task reaches it (the largest, 4,000 x 1536 sentence pairs, is
at about half of it).
"""

MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN = 16
"""``whitening_ridge="auto"`` weighs whitening only with this many training rows per feature.

A covariance from ``n`` rows in ``d`` dimensions has its eigenvalues spread by
about ``(1 +- sqrt(d / n))^2`` around the true ones (Marchenko-Pastur): from 16
rows per feature the estimate is within a factor of two along every direction;
from fewer, whitening scales up directions by their sampling noise, and its
``O(n d^2 + d^3)`` costs most where features are many.
"""

MIN_WHITENING_RIDGE = 1e-6
"""Smallest ridge accepted: below it, float32 rounding of the whitening swamps its weakest directions."""


class MetaAugmentedHeadClassifier(LinearHeadMixin, ClassifierMixin, BaseEstimator):
    """Linear head on frozen embeddings, made robust to spurious features by HSFM.

    Fits a softmax-linear head by hard-set-guided feature-space meta-learning
    (HSFM): starting from an ERM head, a support set is edited in feature space
    so that a head adapted on it for a few gradient steps does well on the
    hardest held-out rows; the head is trained on the edited support set and
    the epoch that scores best on held-out rows (``selection_metric``) is kept.

    The paper draws the support from the training pool (``support_source="pool"``;
    see :meth:`from_preset`). The defaults instead cross-fit the annotated rows:
    they are split in two halves ``n_repeats`` times; for every split, two runs
    each take their support and hard set from one half and select their epoch
    (by worst-group loss) on the other, and the heads of all runs are averaged.
    The defaults make no edits (``outer_steps=0``): each run is then gradient
    descent of the head on its support, stopped early on its selection rows,
    and all runs step together as one batch; with edits on, each run also
    trains a head on its unedited support and keeps it where it scores better
    (``compare_unedited``). Before the runs, the defaults choose between
    standardised and whitened features by held-out scores
    (``whitening_ridge="auto"``). The heads of the runs then compete with
    the strong simple heads (``balanced_candidates``): group-balanced
    logistic regressions on each run's support, their regularisation and
    geometry chosen by the same cross-fitting. The best of those is the
    fitted head unless the runs' heads beat it on the runs' selection rows
    by more than the standard error of their lead, so the fit falls back on
    a tuned group-balanced ``LogisticRegression`` wherever the runs do not
    clearly do better (always, with a few dozen annotated rows).

    Rows whose ``groups`` entry is known are the held-out (annotated) rows;
    rows with an unknown group (``-1``, ``None`` or NaN) are the training pool.
    Features are standardised inside with the training pool's statistics, and
    ``coef_`` / ``intercept_`` apply to the raw features.

    Parameters
    ----------
    support_size_per_class : int, default=1000
        Rows in the support set per class when it comes from the training pool
        (the paper's ``n_s``; a class with fewer training rows uses all of
        them, with a warning), or at most per (class, group) cell when it comes
        from the annotated rows (see ``support_source``).
    inner_steps : int, default=15
        Gradient steps of the inner loop, and Adam steps of each head update
        (the paper's ``T``).
    inner_lr : float or "auto", default="auto"
        Step size of the inner gradient descent (the paper's ``alpha``).
        ``"auto"`` uses ``1 / L``, ``L`` being the Lipschitz constant of the
        support loss's gradient on standardised features, so the step adapts to
        the data's scale and size.
    outer_lr : float, default=0.01
        Adam learning rate of the support-set edits (the paper's ``eta``).
    outer_steps : int, default=0
        Support-set updates per epoch (the paper's ``KH``). 0 (the default):
        no edits and no hypergradient: each run is plain gradient descent of
        the head on its support from the initial head, early-stopped on its
        selection rows. On our benchmark suite the edits changed worst-group
        accuracy by no more than noise at several times the cost
        (``docs/decisions.md``); a positive value turns them on (the paper:
        5-15), and with them the hard set and the outer learning rate.
    hard_set_size : int, default=64
        Held-out rows in the hard set per class, or per (class, group) cell
        when ``hard_set="group"`` (the paper's ``K_hard``).
    hard_set : {"class", "group"}, default="group"
        How the hard set is mined: the highest-loss held-out rows of each class
        (the paper), or of each (class, group) cell.
    n_epochs : int, default=1
        Epochs of hard-set mining, support edits and head update every run
        makes before it may stop (the paper's ``E``, and all of them there).
        With ``compare_unedited``, every run scores its initial head too
        (epoch 0) and keeps it where no epoch beats it; ``n_epochs=0,
        max_epochs=0`` then leaves the initial head to compete with the
        balanced candidates alone.
    max_epochs : int or None, default=40
        Past ``n_epochs``, a run goes on while it improves, up to
        ``max_epochs``: it stops once ``n_iter_no_change`` epochs in a row
        have not improved its selection metric, and keeps its best epoch as
        always. With the default ``n_epochs=1`` this is plain early stopping.
        None: exactly ``n_epochs`` (the paper). Runs that improve slowly need
        it, and where runs peak early it changes nothing. Must be at least
        ``n_epochs``.
    n_iter_no_change : int, default=5
        Epochs without improvement of the selection metric after which a run
        past ``n_epochs`` stops. Unused with ``max_epochs=None``.
    selection_metric : {"worst_group_loss", "worst_group_accuracy"}, \
            default="worst_group_loss"
        Which epoch of a run is kept: the lowest held-out worst-group mean
        cross-entropy (the largest over (class, group) cells of the mean loss),
        or the best held-out worst-group accuracy, ties broken by the lower
        loss (the paper). The loss varies smoothly where a small group's
        accuracy moves in steps of one row, so it picks epochs less by chance.
    balanced_candidates : bool, default=True
        With cross-fitted runs (``support_source="annotated"``, two runs or
        more), the runs' heads compete with group-balanced logistic
        regressions: for each run, a softmax logistic regression on its
        support with every (class, group) cell weighted equally, fitted for
        L2 strengths spanning five decades, on standardised features and on
        isotropic ones (centred, one global scale: the raw embeddings'
        geometry). Each candidate, the runs' heads included, is scored on
        the runs' selection rows: by its mean worst-group accuracy, ties
        broken by its worst-group loss at its best temperature (a scale-free
        loss; the loss alone would favour nearly flat heads). The best
        balanced candidate is refitted on every annotated row, its strength
        scaled to that many rows (as ``LogisticRegressionCV`` refits), and is
        the fitted head unless the runs' heads lead it in worst-group
        accuracy by more than the standard error of that lead, the rows where
        the two disagree carry the lead beyond what luck gives one time in six
        (an exact sign test on the balanced head's worst cell: a lead of one or
        two rows is never enough), and no run's head does worse than the
        balanced head on that run's rows: the one-standard-error rule, made
        robust to cells of a dozen rows, as the runs chose their epochs on
        these rows (``selected_heads_``, ``candidate_scores_``,
        ``balanced_l2_``, ``runs_margin_``). False: the runs' heads.
    compare_unedited : bool, default=True
        Each run also updates a second head, by the same steps, on its support
        as drawn (no edits), and keeps the epoch that scores best on its
        selection rows whichever head it is: the edits are used only where
        they beat not editing on held-out rows (``kept_edits_``); the initial
        head competes as epoch 0, so a run never ends worse on its selection
        rows than it started. False always keeps an epoch of the edited head
        (the paper). Costs one more
        head update per epoch, a small share of the support edits' cost.
    head_update : {"gradient", "adam"}, default="gradient"
        How the head learns from the edited support set each epoch:
        ``inner_steps`` steps of plain gradient descent, the same map the
        support set was optimised through (``"gradient"``), or of Adam, as the
        paper does (``"adam"``).
    head_lr : float or None, default=None
        Step size of the head update. None uses the inner step size.
    support_source : {"pool", "annotated"}, default="annotated"
        Where the support set is drawn from: ``support_size_per_class`` random
        training rows per class (the paper), or the annotated (held-out) rows,
        cross-fitted: they are split in two folds stratified by (class,
        group), ``n_repeats`` times; for each split, each of two runs takes up
        to ``support_size_per_class`` rows of every cell of one fold as its
        support (cells weighted equally in the support loss) and its hard set
        from that fold, and selects its epoch on the other fold; the heads of
        all runs are averaged. When a fold would miss a class (a handful of
        annotated rows), a single run uses all annotated rows for support,
        hard set and selection.
    n_repeats : int, default=2
        Random two-fold splits of the annotated rows with
        ``support_source="annotated"`` (two runs each); more splits average
        out the luck of one split at proportional cost. Unused with ``"pool"``.
    max_grad_norm : float, default=10.0
        The support-set gradient is clipped to this norm.
    validation_fraction : float, default=0.2
        Share of rows held out when every row's group is known (stratified by
        class and group) or when ``groups`` is None (stratified by class).
        Unused when some groups are known and others unknown.
    head_l2 : float, default=0.0
        L2 penalty ``head_l2 / 2 * ||W||^2`` on the head's weights (not the bias,
        standardised features) in the support loss: in the inner loop the
        support set is optimised through and in the head update. 0 in the
        paper; measured without gain on the benchmarks (0.003-0.3).
    whitening_ridge : "auto", float or None, default="auto"
        Whiten the standardised features with the training pool's covariance,
        up to this ridge (relative to the mean variance; at least 1e-6), before
        fitting: the head's gradient steps are then preconditioned and reach
        further along low-variance directions. Heads and supports are mapped
        back, so ``coef_`` still applies to raw features. None keeps standardised
        features (the paper). ``"auto"`` weighs standardised features against
        a ridge of 0.1 on held-out rows before any edit: in each geometry, the
        runs' unedited head updates over ``n_epochs`` epochs, never more (see
        ``compare_unedited``, same support draws) are scored by their lowest
        worst-group loss on their selection rows, and the fit proceeds in the
        geometry with the lower mean (``whitening_ridge_``,
        ``whitening_scores_``), but only where the training pool has at least
        16 rows (by sample weight) per feature: with fewer, the covariance is
        too noisy to precondition by, and the fit keeps standardised features
        without weighing (``whitening_scores_`` is None). Whitening costs a
        pass over the pool and an eigendecomposition of a ``(n_features,
        n_features)`` matrix; ``"auto"`` also runs the unedited head updates
        of both geometries.
    erm_C : float, default=1.0
        Inverse L2 strength of the initial ERM head, a multinomial (softmax)
        logistic regression on the standardised training pool. With three or
        more classes it is ``LogisticRegression(C=erm_C)``; with two, the
        softmax head's two rows make it ``LogisticRegression(C=2 * erm_C)``. Without group labels the ERM head is
        ``LogisticRegression(C=erm_C, class_weight=class_weight)`` on the
        standardised rows, for any number of classes.
    class_weight : dict, "balanced" or None, default=None
        Weight of each class's rows in the ERM head's loss, as
        ``LogisticRegression``'s: ``{class: weight}``, ``"balanced"``
        (inversely proportional to the class's total sample weight) or None
        (one). Also the class weights of the reweighted head (without group
        labels; None there: classes weighed equally, as AFR does). No effect on
        the group-balanced heads, which weigh every (class, group) cell equally.
    reweight_gamma : float, default=1.0
        Without group labels (``fit(X, y)``, or no known group): how strongly
        the reweighted head weighs up the rows an out-of-fold ERM head gets
        wrong or is unsure of: weight ``exp(-reweight_gamma * p)``, ``p`` the
        row's out-of-fold probability of its own class (AFR, Qiu et al. 2023);
        two folds, drawn by row content. 0: no reweighted head. Ignored when
        some group is known.
    reweight_tolerance : float or None, default=0.015
        Without group labels: the most cross-fitted class-balanced accuracy
        (on the two folds) the reweighted head may give up against the ERM
        head and still be the fitted head; otherwise the ERM head is. None:
        the reweighted head whatever it costs (for a search that chooses
        ``reweight_gamma`` with group labels, README "No group labels?").
    standardize : bool, default=True
        Standardise the features with the training pool's (weighted) mean and
        standard deviation before fitting, so that the fit is the same for
        ``X`` and ``a * X + b`` (``a > 0``). False fits on the raw features,
        as the paper authors' released script does (their loop barely moves
        the head from ERM on unit-norm sentence embeddings, where the paper's
        small ``inner_lr`` is tiny): ``from_preset(name, standardize=False)``
        reproduces that script; predictions then depend on the scale of ``X``.
    initial_head : tuple (coef, intercept) or None, default=None
        Use this head instead of fitting the ERM head (e.g. the final layer of
        the network that produced the embeddings). Shapes as
        ``LogisticRegression``'s ``coef_`` and ``intercept_``, in raw feature space.
    device : str, default="auto"
        Where to compute: ``"auto"`` (CUDA when available), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``. An unavailable device is an error.
    n_threads : int or None, default=None
        CPU threads of ``fit``: torch's (restored afterwards; BLAS and LAPACK
        get one, as two thread pools contend for the cores), and those that
        standardise the pool a block of rows each (the same bits on any
        count). None: one thread, unless the training pool has at least
        ``2**24`` entries (rows x features), and then the cores idle when the
        fit starts: the fit's loops are too small for threads to pay, and
        threads that wait for cores another process holds slow them down many
        times (``n_threads_`` says what was used). Set 1 when many fits run
        in parallel (grid searches on joblib or Dask workers).
    random_state : int, RandomState instance or None, default=None
        Seeds the held-out split, the cross-fitting folds and the support
        draws; never a global seed. Draws are keyed by each row's
        standardised content, so they do not depend on the order of the rows,
        and a row of integer ``sample_weight`` k is drawn as k copies of it.
    verbose : int, default=0
        Progress: 1 shows one line per run, updated each epoch; 2 and more
        print every epoch of every run.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    initial_coef_, initial_intercept_ : ndarray
        The initial (ERM or given) head, same shapes.
    support_init_ : ndarray of shape (n_support, n_features)
        Support set before editing: rows of ``X`` (of every run, concatenated).
        Only with support edits (``outer_steps > 0``), as the next two: the
        record of what was edited (:mod:`sklearn_featmeta.explain`).
    support_edited_ : ndarray of shape (n_support, n_features)
        Support set after editing, at each run's selected epoch, in raw
        feature space (a run that kept its unedited head: its initial support).
    support_labels_ : ndarray of shape (n_support,)
    history_ : dict of ndarray
        One entry per run and epoch (long format; ``pandas.DataFrame(history_)``
        makes a table): ``run``, ``epoch``, the ``worst_group_accuracy``,
        ``average_accuracy``, ``heldout_loss`` and ``worst_group_loss`` of the
        edited head on the run's selection rows, the same four of the unedited
        head prefixed ``unedited_`` (NaN without ``compare_unedited``), and the
        mean ``outer_loss`` of the epoch's support updates.
    best_epoch_ : ndarray of shape (n_runs,)
        Selected epoch of each run (1-based; 0: no epoch beat the run's start
        head, which it kept). One run with ``support_source="pool"``,
        ``2 * n_repeats`` (cross-fitted folds) with ``"annotated"`` (one when
        the annotated rows are too few to split, see ``support_source``).
    kept_edits_ : ndarray of bool of shape (n_runs,)
        Whether each run kept a head trained on its edited support (False:
        the unedited head or the start head scored better, see
        ``compare_unedited``). Without edits (``outer_steps=0``) the support
        is never edited, and True means a trained epoch was kept.
    n_iter_ : int
        Most epochs run by a run (``n_epochs`` to ``max_epochs``).
    inner_lr_ : float
        Inner step size used (resolved from ``"auto"``).
    whitening_ridge_ : float or None
        Ridge of the whitening the fit used; None: standardised features
        (resolved from ``"auto"``).
    whitening_scores_ : dict or None
        With ``whitening_ridge="auto"``, where whitening was weighed: the
        score of each geometry (``"standardised"``, ``"whitened"``), the mean
        over runs of the unedited head's lowest held-out worst-group loss;
        lower is better. None otherwise.
    selected_heads_ : str
        What the fitted head is (``balanced_candidates``): ``"runs"`` (the
        mean of the HSFM runs' heads), ``"balanced_standardised"`` or
        ``"balanced_isotropic"`` (a group-balanced logistic regression on
        every annotated row, in that geometry), or, where no row has a known
        group, ``"erm"``: the ERM head refitted on every row (held-out rows
        from the training distribution cannot tell a head that leans on a
        shortcut from one that does not; ``candidate_scores_`` still says
        what the others scored there).
    candidate_scores_ : dict or None
        With ``balanced_candidates``: each candidate's scores on the runs'
        selection rows (``worst_group_accuracy``, the mean over runs, and
        ``worst_group_loss``, at the best temperature), the balanced ones at
        their best L2 strength, and ``"erm"`` where no group is known. None
        when no candidate was weighed (one run, or support from the pool,
        with some group known).
    balanced_l2_ : float or None
        L2 strength chosen for the balanced head (on a run's support, loss of
        total weight one; the refit scales it); None when the runs' heads
        were selected.
    runs_margin_ : float or None
        How far the runs' heads had to lead the best balanced head in mean
        worst-group accuracy on the selection rows to be selected: the
        standard error of that lead (``balanced_candidates``; the rows that
        carry it must also pass the sign test, and no run may trail). None
        when no candidate was weighed.
    device_ : str
        Device the model was fitted on.
    n_threads_ : int
        CPU threads the fit used (resolved from ``n_threads=None``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.

    See Also
    --------
    sklearn_featmeta.baselines.DFRClassifier : Deep feature reweighting baseline.

    References
    ----------
    Parast, Islam, Won, Azam, Akhtar. "HSFM: Hard-Set-Guided Feature-Space
    Meta-Learning for Robust Classification under Spurious Correlations",
    ECCV 2026, arXiv:2603.29313.

    Examples
    --------
    >>> from sklearn_featmeta import MetaAugmentedHeadClassifier
    >>> from sklearn_featmeta.datasets import make_spurious_embeddings
    >>> X, y, groups = make_spurious_embeddings(n_samples=600, random_state=0)
    >>> clf = MetaAugmentedHeadClassifier(n_epochs=5, random_state=0).fit(X, y, groups)
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        "support_size_per_class": [Interval(Integral, 1, None, closed="left")],
        "inner_steps": [Interval(Integral, 1, None, closed="left")],
        "inner_lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "outer_lr": [Interval(Real, 0, None, closed="neither")],
        "outer_steps": [Interval(Integral, 0, None, closed="left")],
        "hard_set_size": [Interval(Integral, 1, None, closed="left")],
        "hard_set": [StrOptions({"class", "group"})],
        "n_epochs": [Interval(Integral, 0, None, closed="left")],
        "selection_metric": [StrOptions({"worst_group_accuracy", "worst_group_loss"})],
        "compare_unedited": ["boolean"],
        "balanced_candidates": ["boolean"],
        "head_update": [StrOptions({"gradient", "adam"})],
        "support_source": [StrOptions({"pool", "annotated"})],
        "n_repeats": [Interval(Integral, 1, None, closed="left")],
        "head_lr": [None, Interval(Real, 0, None, closed="neither")],
        "max_epochs": [None, Interval(Integral, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "head_l2": [Interval(Real, 0, None, closed="left")],
        "whitening_ridge": [
            None,
            StrOptions({"auto"}),
            Interval(Real, MIN_WHITENING_RIDGE, None, closed="left"),
        ],
        "erm_C": [Interval(Real, 0, None, closed="neither")],
        "class_weight": [None, dict, StrOptions({"balanced"})],
        "reweight_gamma": [Interval(Real, 0, None, closed="left")],
        "reweight_tolerance": [None, Interval(Real, 0, 1, closed="both")],
        "standardize": ["boolean"],
        "initial_head": [None, tuple],
        "device": [str],
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        support_size_per_class=1000,
        inner_steps=15,
        inner_lr="auto",
        outer_lr=0.01,
        outer_steps=0,
        hard_set_size=64,
        hard_set="group",
        n_epochs=1,
        max_epochs=40,
        selection_metric="worst_group_loss",
        compare_unedited=True,
        balanced_candidates=True,
        head_update="gradient",
        head_lr=None,
        support_source="annotated",
        n_repeats=2,
        n_iter_no_change=5,
        max_grad_norm=10.0,
        validation_fraction=0.2,
        head_l2=0.0,
        whitening_ridge="auto",
        erm_C=1.0,
        class_weight=None,
        reweight_gamma=1.0,
        reweight_tolerance=0.015,
        standardize=True,
        initial_head=None,
        device="auto",
        n_threads=None,
        random_state=None,
        verbose=0,
    ):
        self.support_size_per_class = support_size_per_class
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.outer_lr = outer_lr
        self.outer_steps = outer_steps
        self.hard_set_size = hard_set_size
        self.hard_set = hard_set
        self.n_epochs = n_epochs
        self.max_epochs = max_epochs
        self.selection_metric = selection_metric
        self.compare_unedited = compare_unedited
        self.balanced_candidates = balanced_candidates
        self.head_update = head_update
        self.head_lr = head_lr
        self.support_source = support_source
        self.n_repeats = n_repeats
        self.n_iter_no_change = n_iter_no_change
        self.max_grad_norm = max_grad_norm
        self.validation_fraction = validation_fraction
        self.head_l2 = head_l2
        self.whitening_ridge = whitening_ridge
        self.erm_C = erm_C
        self.class_weight = class_weight
        self.reweight_gamma = reweight_gamma
        self.reweight_tolerance = reweight_tolerance
        self.standardize = standardize
        self.initial_head = initial_head
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def from_preset(cls, name: str, **params) -> MetaAugmentedHeadClassifier:
        """The estimator with the paper's settings for one data set.

        Parameters
        ----------
        name : {"waterbirds", "celeba", "metashift", "dominoes"}
            Data set whose ResNet-50 settings the paper reports.
        **params
            Further parameters (``random_state``, ``device``, ...); they may
            not override the preset's own. ``standardize=False`` reproduces
            the authors' released script, which fits on raw features.
        """
        if name not in PAPER_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PAPER_PRESETS)}.")
        clash = sorted(set(params) & set(PAPER_PRESETS[name]))
        if clash:
            raise ValueError(
                f"Preset {name!r} fixes {clash}; build the estimator directly to change them."
            )
        return cls(**PAPER_PRESETS[name], **params)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None, sample_weight=None) -> MetaAugmentedHeadClassifier:
        """Fit the head by HSFM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Class labels (any hashable type, two or more classes).
        groups : array-like of shape (n_samples,), default=None
            Spurious group of each row; ``-1``, ``None`` or NaN where unknown.
            Known rows are held out (hard set, model selection); unknown rows
            form the training pool. None (or no known group): the ERM head on
            every row (a standardised ``LogisticRegression(C=erm_C)``), or the
            reweighted head where it stays within ``reweight_tolerance`` of it
            (``reweight_gamma``); no HSFM run is made.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row, in the ERM head's loss, the
            support and hard-set losses, the standardisation and the
            held-out scores. An integer weight counts as that many copies of
            the row, and a zero weight as a row left out.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        if self.max_epochs is not None and self.max_epochs < self.n_epochs:
            raise ValueError(
                f"max_epochs={self.max_epochs} is below n_epochs={self.n_epochs}: every run "
                "makes n_epochs epochs. Set max_epochs to at least n_epochs, or to None for "
                "exactly n_epochs."
            )
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        check_classification_targets(y)
        X, y, groups, weights = drop_zero_weights(X, y, groups, sample_weight)
        self.classes_, y_encoded = np.unique(y, return_inverse=True)
        y_encoded = y_encoded.ravel()
        n_classes = self.classes_.shape[0]
        if n_classes < 2:
            raise ValueError(
                "MetaAugmentedHeadClassifier needs samples of at least 2 classes, "
                f"but the data contains only one class: {self.classes_[0]!r}."
            )
        group_codes = None
        if groups is not None:
            group_codes, _ = encode_groups(as_group_array(groups, X.shape[0]))
            if (group_codes < 0).all():
                warnings.warn(
                    "No row of groups is known (all -1 / None / NaN): fitting as with "
                    "groups=None (the ERM head, or the reweighted head where it stays close).",
                    UserWarning,
                    stacklevel=3,
                )
                group_codes = None

        rng = check_random_state(self.random_state)
        if group_codes is None:
            return self._fit_without_groups(X, y_encoded, weights, rng)
        pool, heldout, heldout_groups = split_pool_and_heldout(
            X, y_encoded, group_codes, weights, self.validation_fraction, rng
        )
        groups_split_rows = group_codes is not None and (group_codes < 0).any()
        self._check_split(y_encoded, weights, pool, heldout, groups_split_rows)
        from . import _core  # torch stays out of prediction and unpickling

        self.n_threads_ = (
            auto_threads(pool.size * X.shape[1]) if self.n_threads is None else self.n_threads
        )
        with fit_threads(self.n_threads_):
            if self.standardize:
                mean, scale = weighted_moments(X, pool, weights[pool], self.n_threads_)
            else:
                mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
            cells, n_cells = cell_codes(y_encoded[heldout], heldout_groups)
            data = _FitData(
                X,
                y_encoded,
                weights,
                pool,
                heldout,
                cells,
                n_cells,
                mean,
                scale,
                class_factor=self._class_factor(y_encoded, weights, self.class_weight),
            )
            runs = self._run_rows(data, rng)
            covariance_rows = self._covariance_rows(data, rng)
            self._warn_small_heldout(cells, n_cells, len(runs))
            initial_head = self._initial_head_in_softmax_form(X.shape[1], n_classes)
            if initial_head is not None:  # to standardised coordinates
                initial_head = (initial_head[0] * scale, initial_head[1] + initial_head[0] @ mean)

            device = _core.resolve_device(self.device)
            result = self._run_core(_core, data, runs, covariance_rows, device, initial_head)
        support_rows = heldout if result.support_from_heldout else pool
        self._store_result(result, X, support_rows, mean, scale, device)
        self._warn_degenerate(X[heldout], y_encoded[heldout])
        return self

    def _class_factor(self, y, weights, class_weight) -> np.ndarray:
        """Weight of each class's rows (``class_weight`` resolved as LogisticRegression does)."""
        if class_weight is None:
            return np.ones(self.classes_.shape[0])
        return compute_class_weight(
            class_weight, classes=self.classes_, y=self.classes_[y], sample_weight=weights
        )

    def _fit_without_groups(self, X, y, weights, rng) -> MetaAugmentedHeadClassifier:
        """``fit`` where no row has a known group: :func:`._groupfree.fit_without_groups`.

        The ERM head on every row, or the reweighted head where it stays
        within ``reweight_tolerance`` of it; no pool / held-out split, no run.
        """
        from . import _core, _groupfree

        start = time.perf_counter()
        n_classes = self.classes_.shape[0]
        every_row = np.arange(X.shape[0])
        device = _core.resolve_device(self.device)  # an unavailable device is an error here too
        self.n_threads_ = auto_threads(X.size) if self.n_threads is None else self.n_threads
        with fit_threads(self.n_threads_):
            if self.standardize:
                mean, scale = weighted_moments(X, every_row, weights, self.n_threads_)
            else:
                mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
            hashes = content_hashes(X, every_row, mean, scale, self.n_threads_)
            second_fold = stratified_split(y, draw_keys(hashes, rng), weights, 0.5)
            if any(np.unique(y[second_fold == side]).size < n_classes for side in (False, True)):
                second_fold = None  # too few rows of a class for out-of-fold predictions
            X_standardized = standardized(X, every_row, mean, scale, X.dtype, self.n_threads_)
            if self.initial_head is not None:
                head = self._initial_head_in_softmax_form(X.shape[1], n_classes)
                head = (head[0] * scale, head[1] + head[0] @ mean)
                result = _groupfree.GroupFreeResult(head, head, "initial_head")
            else:
                reweighted_class_weight = self.class_weight or "balanced"
                result = _groupfree.fit_without_groups(
                    X_standardized,
                    y,
                    weights,
                    n_classes,
                    erm_class_factor=self._class_factor(y, weights, self.class_weight),
                    reweighted_class_factor=self._class_factor(y, weights, reweighted_class_weight),
                    second_fold=second_fold,
                    settings=_groupfree.GroupFreeSettings(
                        l2_per_weight=1.0 / self.erm_C,
                        gamma=self.reweight_gamma,
                        tolerance=self.reweight_tolerance,
                    ),
                )
        if not result.converged:
            warnings.warn(
                "L-BFGS stopped at its iteration limit before the head converged; lower "
                "erm_C (more regularisation) or standardise the features.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.coef_, self.intercept_ = softmax_to_fitted_head(*result.head, mean, scale)
        self.initial_coef_, self.initial_intercept_ = softmax_to_fitted_head(
            *result.erm_head, mean, scale
        )
        self.selected_heads_ = result.chosen
        self.candidate_scores_ = result.scores or None
        # no run was made: the run attributes are empty, the choices of the runs' fit None
        self.history_ = {}
        self.best_epoch_ = np.zeros(0, dtype=np.int64)
        self.kept_edits_ = np.zeros(0, dtype=bool)
        self.n_iter_ = 0
        self.inner_lr_ = None
        self.whitening_ridge_ = self.whitening_scores_ = None
        self.balanced_l2_ = self.runs_margin_ = None
        self.device_ = "cpu" if device.type == "cpu" else f"cpu (the {device} was not needed)"
        if self.verbose:
            scores = ""
            if result.scores:
                scores = " (cross-fitted class-balanced accuracy: " + ", ".join(
                    f"{name} {score['balanced_accuracy']:.4f}"
                    for name, score in result.scores.items()
                )
                scores += f"; tolerance {self.reweight_tolerance})"
            print(
                f"[{type(self).__name__}] no known group, {X.shape[0]} rows: fitted head "
                f"{result.chosen}{scores}, in {time.perf_counter() - start:.2f}s"
            )
        return self

    def _run_rows(self, data: _FitData, rng):
        """The rows of every run (``RunRows`` as NumPy index arrays): support, shaping, selection.

        Random choices are keyed by row content (:mod:`._groups`), so a row of
        integer weight k is drawn as k copies of it would be.
        """
        cap = self.support_size_per_class
        X, y, weights, moments = data.X, data.y, data.weights, (data.mean, data.scale)
        pool, heldout, cells = data.pool, data.heldout, data.cells
        if self.support_source == "pool":
            keys = draw_keys(content_hashes(X, pool, *moments, self.n_threads_), rng)
            mass = take_by_weight(y[pool], keys, weights[pool], cap)
            every_row = slice(None)
            return [(np.flatnonzero(mass), mass[mass > 0], every_row, every_row)]
        y_heldout, weights_heldout = y[heldout], weights[heldout]
        hashes = content_hashes(X, heldout, *moments, self.n_threads_)
        folds = cross_fitting_folds(
            hashes, cells, y_heldout, weights_heldout, self.classes_.shape[0], self.n_repeats, rng
        )
        if folds is None:
            mass = take_by_weight(cells, draw_keys(hashes, rng), weights_heldout, cap)
            every_row = slice(None)
            return [(np.flatnonzero(mass), mass[mass > 0], every_row, every_row)]
        runs = []
        for split in folds:
            first, second = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
            for shaping, selection in ((second, first), (first, second)):
                keys = draw_keys(hashes[shaping], rng)
                mass = take_by_weight(cells[shaping], keys, weights_heldout[shaping], cap)
                runs.append((shaping[mass > 0], mass[mass > 0], shaping, selection))
        return runs

    def _covariance_rows(self, data: _FitData, rng):
        """Pool rows and weights the whitening covariance is estimated on; None for all.

        Drawn by row content (as the supports are), and only where the full
        product would exceed :data:`WHITENING_COVARIANCE_BUDGET`, after every
        other draw: smaller fits draw exactly as without it. The keys hash a
        few varying features, a pass over a sliver of the pool.
        """
        pool, n_features = data.pool, data.X.shape[1]
        weights = data.weights[pool]
        n_rows = max(WHITENING_COVARIANCE_BUDGET // n_features**2, 8 * n_features)
        pool_size = data.pool_size
        if self._whitening_ridge(data) is None or pool_size <= n_rows:
            return None
        columns = np.flatnonzero(data.scale != 1.0)[:32]
        if columns.size == 0:
            return None
        if columns[-1] - columns[0] + 1 == columns.size:  # consecutive, as usual: a view, no copy
            columns = slice(columns[0], columns[-1] + 1)
        hashes = content_hashes(data.X[:, columns], pool, data.mean[columns], data.scale[columns])
        budget = weights.sum() * n_rows / pool_size
        mass = take_by_weight(np.zeros(pool.size), draw_keys(hashes, rng), weights, budget)
        return np.flatnonzero(mass), mass[mass > 0]

    def _warn_small_heldout(self, cells, n_cells, n_runs):
        counts = np.bincount(cells, minlength=n_cells)
        if counts.min() < MIN_HELDOUT_ROWS_PER_GROUP:
            warnings.warn(
                f"Only {counts.min()} held-out row(s) in the smallest (class, group) cell "
                f"({counts.sum()} in all): the hard set and the kept epoch rest on very few rows "
                "and the fit is close to chance there. Annotate more rows (give them a "
                "known group), or compare with LogisticRegression.",
                UserWarning,
                stacklevel=4,
            )
        elif n_runs == 1 and self.support_source == "annotated":
            warnings.warn(
                "Too few annotated rows to cross-fit (a fold would miss a class): one run uses "
                "them all for its support, its hard set and its kept epoch.",
                UserWarning,
                stacklevel=4,
            )

    def _warn_degenerate(self, X_heldout, y_heldout):
        scores = self.decision_function(X_heldout)
        spread = float(np.ptp(scores, axis=0).max())
        predicted = predicted_indices(scores)  # not self.predict: one product with the rows
        if spread < FLAT_HEAD_SPREAD or (
            np.unique(predicted).size == 1 and np.unique(y_heldout).size > 1
        ):
            warnings.warn(
                f"The fitted head is degenerate: its logits vary by {spread:.2g} over the "
                f"held-out rows and it predicts {np.unique(predicted).size} of "
                f"{self.classes_.size} classes there (a flat head predicts the single class "
                "its bias favours). Check head_l2, erm_C and the learning rates.",
                UserWarning,
                stacklevel=3,
            )

    def _check_split(self, y_encoded, weights, pool, heldout, groups_split_rows):
        n_classes = self.classes_.shape[0]
        pool_counts = np.bincount(y_encoded[pool], minlength=n_classes)
        heldout_counts = np.bincount(y_encoded[heldout], minlength=n_classes)
        if heldout.size == 0:
            raise ValueError(
                "No rows are left for the held-out set: give at least two rows per class "
                "(or rows with known groups)."
            )
        if (pool_counts == 0).any():
            raise ValueError(
                f"Class(es) {self.classes_[pool_counts == 0].tolist()} have no training rows: "
                "every row of them has a known group. Mark some of their rows unknown "
                "(-1 / None), or give every row a known group so that validation_fraction "
                "of them are held out."
            )
        # A hold-out drawn by us may miss a class of a single row; one the user
        # drew by marking groups must not, or that class is never evaluated.
        if groups_split_rows and (heldout_counts == 0).any():
            raise ValueError(
                f"Class(es) {self.classes_[heldout_counts == 0].tolist()} have no rows with "
                "a known group, so the hard set and model selection cannot see them. Give "
                "some of their rows a known group."
            )
        # the support takes weight, not rows: a row of weight k counts as its k copies
        pool_weight = np.bincount(y_encoded[pool], weights=weights[pool], minlength=n_classes)
        lacking = pool_weight < self.support_size_per_class
        if lacking.any() and self.support_source == "pool":
            warnings.warn(
                f"Class(es) {self.classes_[lacking].tolist()} have fewer training rows "
                f"({[float(f'{w:g}') for w in pool_weight[lacking]]} by sample weight) than "
                f"support_size_per_class={self.support_size_per_class}; their support uses "
                "every training row they have.",
                UserWarning,
                stacklevel=4,
            )

    def _initial_head_in_softmax_form(self, n_features, n_classes):
        if self.initial_head is None:
            return None
        if len(self.initial_head) != 2:
            raise ValueError("initial_head must be a tuple (coef, intercept).")
        coef = np.asarray(self.initial_head[0], dtype=np.float64)
        intercept = np.asarray(self.initial_head[1], dtype=np.float64).reshape(-1)
        n_rows = 1 if n_classes == 2 else n_classes
        if coef.shape != (n_rows, n_features) or intercept.shape != (n_rows,):
            raise ValueError(
                f"initial_head must have coef of shape ({n_rows}, {n_features}) and intercept "
                f"of shape ({n_rows},) for {n_classes} classes and {n_features} features, "
                f"as LogisticRegression's; got {coef.shape} and {intercept.shape}."
            )
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError("initial_head contains NaN or infinity.")
        if n_classes == 2:
            coef, intercept = binary_to_softmax_head(coef, intercept)
        return coef, intercept

    def _settings(self, _core, data: _FitData):
        return _core.HSFMSettings(
            support_size_per_class=self.support_size_per_class,
            inner_steps=self.inner_steps,
            inner_lr=None if self.inner_lr == "auto" else self.inner_lr,
            outer_lr=self.outer_lr,
            outer_steps=self.outer_steps,
            hard_set_size=self.hard_set_size,
            n_epochs=self.n_epochs,
            max_epochs=self.max_epochs,
            head_update=self.head_update,
            head_lr=self.head_lr,
            support_source=self.support_source,
            max_grad_norm=self.max_grad_norm,
            n_iter_no_change=self.n_iter_no_change,
            weight_decay=self.head_l2,
            selection_metric=self.selection_metric,
            compare_unedited=self.compare_unedited,
            balanced_candidates=self.balanced_candidates,
            whitening_ridge=self._whitening_ridge(data),
            choose_whitening=self.whitening_ridge == "auto",
            erm_class_factor=None if self.class_weight is None else tuple(data.class_factor),
        )

    def _whitening_ridge(self, data: _FitData):
        """The ridge of the whitened geometry (fitted or weighed), None for none.

        ``"auto"`` weighs it only where the pool has
        :data:`MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN` rows per feature.
        """
        if self.whitening_ridge != "auto":
            return self.whitening_ridge
        enough_rows = data.pool_size >= MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN * data.X.shape[1]
        return AUTO_WHITENING_RIDGE if enough_rows else None

    def _run_core(self, _core, data: _FitData, runs, covariance_rows, device, initial_head):
        import torch

        dtype = torch.float64 if data.X.dtype == np.float64 else torch.float32
        X, y, pool, heldout = data.X, data.y, data.pool, data.heldout
        cells, n_cells, n_classes = data.cells, data.n_cells, self.classes_.shape[0]
        hard_cells, n_hard_cells = (
            (cells, n_cells) if self.hard_set == "group" else (y[heldout], n_classes)
        )

        def tensor(array, dtype=dtype):
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

        def rows(index):
            return index if isinstance(index, slice) else tensor(index, torch.int64)

        def standardized_rows(index):
            return tensor(standardized(X, index, data.mean, data.scale, X.dtype, self.n_threads_))

        start = time.perf_counter()
        settings = self._settings(_core, data)
        progress = _Progress(self, len(runs), _core.runs_in_one_batch(settings))
        if self.verbose:
            print(
                f"[{type(self).__name__}] {pool.size} training rows, {heldout.size} held-out "
                f"rows in {n_cells} groups, {X.shape[1]} features, {len(runs)} run(s), "
                f"device {device}"
            )
        result = _core.fit_hsfm(
            _core.Rows(
                standardized_rows(pool), tensor(y[pool], torch.int64), tensor(data.weights[pool])
            ),
            _core.HeldoutRows(
                standardized_rows(heldout),
                tensor(y[heldout], torch.int64),
                tensor(data.weights[heldout]),
                cells=tensor(cells, torch.int64),
                n_cells=n_cells,
                hard_set_cells=tensor(hard_cells, torch.int64),
                n_hard_set_cells=n_hard_cells,
            ),
            [
                _core.RunRows(rows(index), tensor(mass), rows(shaping), rows(selection))
                for index, mass, shaping, selection in runs
            ],
            settings,
            n_classes=n_classes,
            erm_l2=1.0 / (self.erm_C * (data.weights * data.class_factor[y])[pool].sum()),
            initial_head=None if initial_head is None else tuple(map(tensor, initial_head)),
            isotropic_factor=tensor(isotropic_factor(data.scale)) if self.standardize else None,
            covariance_rows=(
                None
                if covariance_rows is None
                else (tensor(covariance_rows[0], torch.int64), tensor(covariance_rows[1]))
            ),
            on_epoch=progress.epoch if self.verbose else None,
        )
        progress.close()
        self._warn_about_runs(result)
        if self.verbose:
            if result.probe_scores is not None:
                scores = result.probe_scores
                print(
                    f"[{type(self).__name__}] geometry: "
                    f"{'whitened' if result.whitened else 'standardised'} (unedited heads' "
                    f"held-out worst-group loss {scores['standardised']:.4f} standardised, "
                    f"{scores['whitened']:.4f} whitened)"
                )
            if result.choice.scores is not None:
                scores = ", ".join(
                    f"{name} {score['worst_group_accuracy']:.4f} / {score['worst_group_loss']:.4f}"
                    for name, score in result.choice.scores.items()
                )
                print(
                    f"[{type(self).__name__}] fitted head: {result.choice.chosen} (candidates' "
                    f"held-out worst-group accuracy / loss: {scores})"
                )
                verdict = result.choice.verdict
                if verdict is not None:
                    print(
                        f"[{type(self).__name__}] the runs against the best balanced head: a "
                        f"lead of {verdict.lead:.4f} where {verdict.margin:.4f} was needed, on "
                        f"rows luck gives with chance {verdict.tail:.3f} (below "
                        f"{_core.ONE_STANDARD_ERROR_TAIL:.3f} needed), weakest run "
                        f"{verdict.weakest_run_lead:+.4f}"
                    )
            best = ", ".join(
                f"{run.best_epoch}{'' if run.kept_edits else ' (unedited)'}" for run in result.runs
            )
            made = ", ".join(str(run.epochs_made) for run in result.runs)
            print(
                f"[{type(self).__name__}] done in {time.perf_counter() - start:.2f}s: "
                f"best epoch {best} of {made} epochs (inner_lr {result.inner_lr:.3g})"
            )
        return result

    def _warn_about_runs(self, result):
        if not result.erm_converged:
            warnings.warn(
                "The ERM head's L-BFGS stopped at its iteration limit before converging; "
                "lower erm_C (more regularisation) or standardise the features.",
                ConvergenceWarning,
                stacklevel=5,
            )
        for number, run in enumerate(result.runs, 1):
            if run.diverged:
                warnings.warn(
                    f"The bilevel loss became non-finite in epoch "
                    f"{run.epochs_made + 1} of run {number}; that run stopped "
                    f"and kept epoch {run.best_epoch}. Lower outer_lr or inner_lr.",
                    RuntimeWarning,
                    stacklevel=5,
                )
        improving = sum(run.still_improving for run in result.runs)
        if improving:
            warnings.warn(
                f"{improving} of {len(result.runs)} run(s) still improved their held-out "
                f"selection score at their last epoch, max_epochs={self.max_epochs}; raise "
                "max_epochs (or the step sizes).",
                ConvergenceWarning,
                stacklevel=5,
            )

    def _epoch_range(self) -> str:
        """How many epochs a run makes, for progress output: ``10`` or ``10-40``."""
        if self.max_epochs is None or self.max_epochs == self.n_epochs:
            return str(self.n_epochs)
        return f"{self.n_epochs}-{self.max_epochs}"

    def _store_result(self, result, X, support_source_rows, mean, scale, device):
        def numpy(tensor):
            return tensor.detach().cpu().double().numpy()

        self.coef_, self.intercept_ = softmax_to_fitted_head(
            numpy(result.weight), numpy(result.bias), mean, scale
        )
        self.initial_coef_, self.initial_intercept_ = softmax_to_fitted_head(
            numpy(result.initial_weight), numpy(result.initial_bias), mean, scale
        )
        runs = result.runs
        if self.outer_steps > 0:  # the supports are the fit's record only where they were edited
            self._store_supports(runs, X, support_source_rows, mean, scale)
        self.history_ = {
            "run": np.concatenate([np.full(r.epochs_made, i) for i, r in enumerate(runs)]),
            "epoch": np.concatenate([np.arange(1, r.epochs_made + 1) for r in runs]),
        }
        for key in runs[0].history:
            self.history_[key] = np.concatenate(
                [np.asarray(r.history[key], dtype=float) for r in runs]
            )
        self.best_epoch_ = np.array([r.best_epoch for r in runs])
        self.kept_edits_ = np.array([r.kept_edits for r in runs])
        self.n_iter_ = max(r.epochs_made for r in runs)
        self.inner_lr_ = float(result.inner_lr)
        ridge = AUTO_WHITENING_RIDGE if self.whitening_ridge == "auto" else self.whitening_ridge
        self.whitening_ridge_ = ridge if result.whitened else None
        self.whitening_scores_ = result.probe_scores
        self.selected_heads_ = result.choice.chosen
        self.candidate_scores_ = result.choice.scores
        self.balanced_l2_ = result.choice.balanced_l2
        verdict = result.choice.verdict
        self.runs_margin_ = None if verdict is None else verdict.margin
        self.device_ = str(device)

    def _store_supports(self, runs, X, support_source_rows, mean, scale):
        """``support_init_``, ``support_edited_`` and ``support_labels_`` of every run."""
        support_rows = np.concatenate(
            [support_source_rows[r.support_index.cpu().numpy()] for r in runs]
        )
        # in X's dtype, as computed: with many annotated rows these are the largest attributes
        self.support_init_ = X[support_rows]  # exact rows, no round trip
        # in X's dtype and in place: eight runs' supports in float64 would double the peak memory
        edited = np.concatenate([r.support_edited.detach().cpu().numpy() for r in runs])
        edited *= scale.astype(edited.dtype)
        edited += mean.astype(edited.dtype)
        # a run that kept no edits has its support as drawn,
        # not after a round trip through whitening (rounding that would read as edits)
        edits_kept = [r.kept_edits for r in runs]
        unedited = np.repeat(np.logical_not(edits_kept), [len(r.support_index) for r in runs])
        edited[unedited] = self.support_init_[unedited]
        self.support_edited_ = edited
        self.support_labels_ = self.classes_[
            np.concatenate([r.support_labels.cpu().numpy() for r in runs])
        ]


@dataclass
class _FitData:
    """A fit's rows after validation, the pool / held-out split and the pool's moments."""

    X: np.ndarray
    y: np.ndarray  # class codes
    weights: np.ndarray  # sample weights (all positive)
    pool: np.ndarray  # row indices of the training pool
    heldout: np.ndarray  # row indices of the held-out (annotated) rows
    cells: np.ndarray  # (class, group) cell of each held-out row
    n_cells: int
    mean: np.ndarray
    scale: np.ndarray
    class_factor: np.ndarray  # weight of each class's rows in the ERM head's loss (class_weight)

    @property
    def pool_size(self) -> float:
        """Rows in the pool, a row of integer weight k counted as its k copies."""
        return max(self.pool.size, float(self.weights[self.pool].sum()))


class _Progress:
    """``verbose`` output: a line updated in place each epoch (every epoch on its own line at 2+).

    Runs with edits go one after another: a line per run. Batched runs (no
    edits, :func:`._core.runs_in_one_batch`) step at once: one line, each run's
    latest score.
    """

    def __init__(self, estimator, n_runs: int, batched: bool):
        self.estimator, self.n_runs, self.batched = estimator, n_runs, batched
        self.open = False
        self.latest = {}  # run -> its latest record, for the line of batched runs

    def epoch(self, record: dict) -> None:
        estimator = self.estimator
        best_loss = record["worst_group_loss"]
        if estimator.compare_unedited and np.isfinite(record["unedited_worst_group_loss"]):
            best_loss = min(best_loss, record["unedited_worst_group_loss"])
        line = (
            f"[{type(estimator).__name__}] run {record['run'] + 1}/{self.n_runs}, "
            f"epoch {record['epoch']:>3}/{estimator._epoch_range()}: "
            f"worst-group acc {record['worst_group_accuracy']:.4f}, "
            f"worst-group loss {best_loss:.4f}, outer loss {record['outer_loss']:.4f}"
        )
        if estimator.verbose >= 2:
            print(line, flush=True)
            return
        if self.batched:
            self.latest[record["run"]] = record
            scores = ", ".join(
                f"{self.latest[run]['worst_group_accuracy']:.4f}" for run in sorted(self.latest)
            )
            line = (
                f"[{type(estimator).__name__}] {self.n_runs} run(s), epoch "
                f"{record['epoch']:>3}/{estimator._epoch_range()}: worst-group acc by run {scores}"
            )
        elif self.open and record["epoch"] == 1:
            print(flush=True)  # the previous run's line is complete
        print(f"\r{line}", end="", flush=True)
        self.open = True

    def close(self) -> None:
        if self.open:
            print(flush=True)
            self.open = False
