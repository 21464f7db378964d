"""MetaAugmentedHeadClassifier: the scikit-learn face of HSFM.

Validation, the pool / held-out split and the fitted attributes live here; the
numerics live in :mod:`sklearn_featmeta._core` (imported inside ``fit`` so that
a fitted model predicts and unpickles without torch).
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._checks import (
    check_parameter_combinations,
    check_split,
    reweight_strengths,
    validated_rows,
    warn_about_runs,
    warn_degenerate,
    warn_small_annotated,
)
from ._groups import known_group_codes
from ._linear import (
    LinearHeadMixin,
    softmax_to_fitted_head,
    standardised_softmax_head,
)
from ._preprocessing import isotropic_factor
from ._presets import PAPER_PRESETS
from ._progress import Progress, report_fit, report_fit_without_groups
from ._rows import (
    FitData,
    class_factor,
    draw_covariance_rows,
    draw_run_rows,
    edited_supports,
    fit_data,
    group_free_rows,
)
from ._sampling import split_pool_and_annotated
from ._threads import auto_threads, fit_threads

AUTO_WHITENING_RIDGE = 0.1
"""Ridge of the whitened geometry that ``whitening_ridge="auto"`` weighs against standardisation."""

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

    **Default path (some rows annotated with their group).** The annotated rows
    are split in two halves ``n_repeats`` times; for every split, two *runs*
    each take their support from one half (every (class, group) cell weighted
    equally) and train the head on it by gradient descent from the ERM head,
    stopped early on the other half (by worst-group loss); all runs step
    together as one batch. Group-balanced logistic regressions on the same
    supports (``balanced_candidates``: an L2 path, standardised and isotropic
    features) compete with the runs' mean head; the best, refitted on every
    annotated row, is the fitted head unless the runs' heads beat it clearly
    on the rows they did not fit (a lead above its standard error, a sign
    test, no run trailing). Before the runs the fit chooses between
    standardised and whitened features where the pool is large enough
    (``whitening_ridge="auto"``).

    **Without any known group** (``fit(X, y)``): no run; the ERM head, or the
    strongest AFR-style reweighted head (``reweight_gamma``) that, as each
    weaker one, stays within ``reweight_tolerance`` of it on every class and
    gives up most of the rows it changes.

    **The paper's step, opt-in** (``outer_steps > 0``): each epoch first edits
    the support in feature space so that a head adapted on it for a few
    gradient steps does well on the hardest held-out rows (the hard set), and
    keeps the unedited head where it scores better (``compare_unedited``); the
    edits are stored for :mod:`sklearn_featmeta.explain`. The paper also draws
    the support from the training pool (``support_source="pool"``;
    :meth:`from_preset`).

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
        Steps of the inner loop and of each head update (the paper's ``T``).
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
        selection rows. A positive value turns the paper's edits on (5-15
        there), and with them the hard set and the outer learning rate
        (``docs/decisions.md``: why they are off by default).
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
        class and group). Unused when some groups are known and others
        unknown, and without any known group (nothing is held out then).
    head_l2 : float, default=0.0
        L2 penalty ``head_l2 / 2 * ||W||^2`` on the head's weights (not the bias,
        standardised features) in the support loss: in the inner loop the
        support set is optimised through and in the head update (0 in the
        paper).
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
        without weighing (``whitening_scores_`` is None).
    erm_C : float, default=1.0
        Inverse L2 strength of the initial ERM head, a multinomial (softmax)
        logistic regression on the standardised training pool. With three or
        more classes it is ``LogisticRegression(C=erm_C)``; with two, the
        softmax head's two rows make it ``LogisticRegression(C=2 * erm_C)``.
        Without group labels the ERM head is ``LogisticRegression(C=erm_C,
        class_weight=class_weight)`` on the standardised rows, for any number
        of classes.
    class_weight : dict, "balanced" or None, default=None
        Weight of each class's rows in the ERM head's loss, as
        ``LogisticRegression``'s: ``{class: weight}``, ``"balanced"``
        (inversely proportional to the class's total sample weight) or None
        (one). Also the class weights of the reweighted head (without group
        labels; None there: classes weighed equally, as AFR does). No effect on
        the group-balanced heads, which weigh every (class, group) cell equally.
    reweight_gamma : float or sequence of float, default=(1.0, 2.0)
        Without group labels (``fit(X, y)``, or no known group): how strongly
        a reweighted head weighs up the rows an out-of-fold ERM head gets
        wrong or is unsure of: weight ``exp(-reweight_gamma * p)``, ``p`` the
        row's out-of-fold probability of its own class (AFR, Qiu et al. 2023);
        two folds, drawn by row content. A sequence (positive, increasing):
        strengths tried in turn, each only where the one before was kept. 0:
        no reweighted head. Ignored (but checked) when some group is known.
    reweight_tolerance : float or None, default=0.015
        Without group labels: a reweighted head is kept only if it gives up
        at most this much cross-fitted accuracy (on the two folds) on every
        class against the ERM head, and is right on under half of the
        training rows whose class it changes (winning most of them: a better
        fit of the training rows, not less of a shortcut). None: the
        strongest reweighted head in any case (for a search that chooses
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
        head on the run's selection rows; with edits (``outer_steps > 0``) also
        the same four of the unedited head prefixed ``unedited_`` (NaN without
        ``compare_unedited``) and the mean ``outer_loss`` of the epoch's
        support updates.
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
        Most epochs run by a run (``n_epochs`` to ``max_epochs``). Where no
        group is known no run is made: ``history_`` is empty, ``best_epoch_``
        and ``kept_edits_`` have no entry, ``n_iter_`` is 0 and ``inner_lr_``
        None.
    inner_lr_ : float or None
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
        every annotated row, in that geometry). Where no row has a known
        group: ``"erm"`` (the ERM head on every row), ``"reweighted
        (gamma=g)"`` (see ``reweight_tolerance``) or ``"initial_head"``.
    candidate_scores_ : dict or None
        With ``balanced_candidates``: each candidate's scores on the runs'
        selection rows (``worst_group_accuracy``, the mean over runs, and
        ``worst_group_loss``, at the best temperature), the balanced ones at
        their best L2 strength. Where no group is known, the cross-fitted
        ``balanced_accuracy`` of the ``"erm"`` head and of each reweighted head
        tried, with its ``largest_class_cost`` and, where it was fitted on
        every row, ``right_where_heads_disagree``. None when
        no candidate was weighed (one run, support from the pool, or
        ``reweight_gamma=0``).
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
        "reweight_gamma": [Interval(Real, 0, None, closed="left"), "array-like"],
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
        reweight_gamma=(1.0, 2.0),
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
            every row (a standardised ``LogisticRegression(C=erm_C)``), or a
            reweighted head (``reweight_gamma``) that passes the tests of
            ``reweight_tolerance``; no HSFM run is made.
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
        check_parameter_combinations(self)
        X, y_encoded, self.classes_, groups, weights = validated_rows(
            self, X, y, groups, sample_weight
        )
        group_codes = known_group_codes(groups, X.shape[0])
        rng = check_random_state(self.random_state)
        if group_codes is None:
            return self._fit_without_groups(X, y_encoded, weights, rng)
        split = self._split_rows(X, y_encoded, group_codes, weights, rng)
        from . import _core  # torch stays out of prediction and unpickling

        pool, annotated, _ = split
        self.n_threads_ = (
            auto_threads(pool.size * X.shape[1]) if self.n_threads is None else self.n_threads
        )
        with fit_threads(self.n_threads_):
            data, runs, covariance_rows = self._draw_rows(X, y_encoded, weights, split, rng)
            initial_head = standardised_softmax_head(
                self.initial_head, self.classes_.shape[0], data.mean, data.scale
            )
            device = _core.resolve_device(self.device)
            result = self._run_core(data, runs, covariance_rows, device, initial_head)
        support_rows = annotated if result.support_from_annotated else pool
        self._store_result(result, X, support_rows, data.mean, data.scale, device)
        warn_degenerate(self, X[annotated], y_encoded[annotated])
        return self

    def _split_rows(self, X, y, group_codes, weights, rng):
        """The pool, the annotated rows and their groups, checked (:func:`check_split`)."""
        split = split_pool_and_annotated(X, y, group_codes, weights, self.validation_fraction, rng)
        pool, annotated, _ = split
        check_split(
            self.classes_,
            y,
            weights,
            pool,
            annotated,
            groups_split_rows=bool((group_codes < 0).any()),
            support_source=self.support_source,
            support_size_per_class=self.support_size_per_class,
        )
        return split

    def _draw_rows(self, X, y, weights, split, rng):
        """The fit's rows (:class:`FitData`), every run's rows and the whitening covariance's."""
        data = fit_data(
            X,
            y,
            weights,
            split,
            class_factor=class_factor(self.classes_, y, weights, self.class_weight),
            standardize=self.standardize,
            n_threads=self.n_threads_,
        )
        runs = draw_run_rows(
            data,
            rng,
            support_source=self.support_source,
            support_size_per_class=self.support_size_per_class,
            n_classes=self.classes_.shape[0],
            n_repeats=self.n_repeats,
            n_threads=self.n_threads_,
        )
        covariance_rows = draw_covariance_rows(data, rng, self._whitening_ridge(data))
        warn_small_annotated(data.cells, data.n_cells, len(runs), self.support_source)
        return data, runs, covariance_rows

    def _fit_without_groups(self, X, y, weights, rng) -> MetaAugmentedHeadClassifier:
        """``fit`` where no row has a known group: :func:`._groupfree.fit_without_groups`.

        The ERM head on every row, or a reweighted head that passes the tests
        of ``reweight_tolerance``; no pool / held-out split, no run.
        """
        from . import _core
        from ._core import _groupfree

        start, gammas = time.perf_counter(), reweight_strengths(self.reweight_gamma)
        n_classes = self.classes_.shape[0]
        device = _core.resolve_device(self.device)  # an unavailable device is an error here too
        self.n_threads_ = auto_threads(X.size) if self.n_threads is None else self.n_threads
        with fit_threads(self.n_threads_):
            rows = group_free_rows(
                X,
                y,
                weights,
                rng,
                standardize=self.standardize,
                n_threads=self.n_threads_,
                draw_folds=self.initial_head is None and bool(gammas),
            )
            mean, scale = rows.mean, rows.scale
            if self.initial_head is not None:
                head = standardised_softmax_head(self.initial_head, n_classes, mean, scale)
                result = _groupfree.GroupFreeResult(head, head, "initial_head")
            else:
                reweighted_class_weight = self.class_weight or "balanced"
                result = _groupfree.fit_without_groups(
                    rows.X,
                    y,
                    weights,
                    n_classes,
                    erm_class_factor=class_factor(self.classes_, y, weights, self.class_weight),
                    reweighted_class_factor=class_factor(
                        self.classes_, y, weights, reweighted_class_weight
                    ),
                    second_fold=rows.second_fold,
                    settings=_groupfree.GroupFreeSettings(
                        l2_per_weight=1.0 / self.erm_C,
                        gammas=gammas,
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
            report_fit_without_groups(self, result, X.shape[0], time.perf_counter() - start)
        return self

    def _whitening_ridge(self, data: FitData):
        """The ridge of the whitened geometry (fitted or weighed), None for none.

        ``"auto"`` weighs it only where the pool has
        :data:`MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN` rows per feature.
        """
        if self.whitening_ridge != "auto":
            return self.whitening_ridge
        enough_rows = data.pool_size >= MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN * data.X.shape[1]
        return AUTO_WHITENING_RIDGE if enough_rows else None

    def _run_core(self, data: FitData, runs, covariance_rows, device, initial_head):
        import torch

        from . import _core
        from ._core_inputs import Tensors, core_rows, core_settings

        tensors = Tensors(device, torch.float64 if data.X.dtype == np.float64 else torch.float32)
        n_classes = self.classes_.shape[0]
        start = time.perf_counter()
        settings = core_settings(self, data, self._whitening_ridge(data))
        rows = core_rows(
            data,
            runs,
            covariance_rows,
            tensors,
            n_classes=n_classes,
            group_hard_set=self.hard_set == "group",
            n_threads=self.n_threads_,
        )
        progress = Progress(self, len(runs), _core.runs_in_one_batch(settings))
        if self.verbose:
            print(
                f"[{type(self).__name__}] {data.pool.size} training rows, {data.annotated.size} "
                f"held-out rows in {data.n_cells} groups, {data.X.shape[1]} features, "
                f"{len(runs)} run(s), device {device}"
            )
        erm_weight = (data.weights * data.class_factor[data.y])[data.pool].sum()
        result = _core.fit_hsfm(
            rows.pool,
            rows.annotated,
            rows.runs,
            settings,
            n_classes=n_classes,
            erm_l2=1.0 / (self.erm_C * erm_weight),
            initial_head=None if initial_head is None else tuple(map(tensors, initial_head)),
            isotropic_factor=tensors(isotropic_factor(data.scale)) if self.standardize else None,
            covariance_rows=rows.covariance_rows,
            on_epoch=progress.epoch if self.verbose else None,
            release_pool=True,  # the pool's standardised copy is this fit's own
        )
        progress.close()
        warn_about_runs(result, self.max_epochs)
        if self.verbose:
            report_fit(type(self).__name__, result, time.perf_counter() - start)
        return result

    def _epoch_range(self) -> str:
        """How many epochs a run makes, for progress output: ``10`` or ``10-40``."""
        if self.max_epochs is None or self.max_epochs == self.n_epochs:
            return str(self.n_epochs)
        return f"{self.n_epochs}-{self.max_epochs}"

    def _store_result(self, result, X, support_source_rows, mean, scale, device):
        def numpy(tensor):
            return tensor.detach().cpu().double().numpy()

        self.coef_, self.intercept_ = softmax_to_fitted_head(
            numpy(result.coef), numpy(result.intercept), mean, scale
        )
        self.initial_coef_, self.initial_intercept_ = softmax_to_fitted_head(
            numpy(result.initial_coef), numpy(result.initial_intercept), mean, scale
        )
        runs = result.runs
        if self.outer_steps > 0:  # the supports are the fit's record only where they were edited
            self.support_init_, self.support_edited_, labels = edited_supports(
                runs, X, support_source_rows, mean, scale
            )
            self.support_labels_ = self.classes_[labels]
        self.history_ = {
            "run": np.concatenate([np.full(r.epochs_made, i) for i, r in enumerate(runs)]),
            "epoch": np.concatenate([np.arange(1, r.epochs_made + 1) for r in runs]),
        }
        for key in runs[0].history:  # with edits also the unedited control and the outer loss
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
