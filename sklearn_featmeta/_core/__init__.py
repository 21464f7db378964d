"""The core: the numerics of a fit, in rooms. Never imports scikit-learn.

The default path of a fit (:func:`fit_hsfm`, ``_fit``) is: the ERM head
(``_losses``), the group-balanced candidate heads and the rule that weighs the
runs' heads against them (``_candidates``), the optional whitening
(``_geometry``), and the runs' head updates batched in one program (``_runs``,
on supports from ``_supports``, scored by ``_scores``, stepped by
``_optimizers``; each run's kept epoch, patience, history and progress records
kept by ``_tracker``). The paper's opt-in support edits (``outer_steps > 0``) live in
``_bilevel``, on the same tracker. Settings, rows and results are dataclasses (``_types``); where
a fit computes, ``_device``. Every head fit that is not a step of a run is a
softmax regression in NumPy (``_softmax``). ``fit(X, y)`` without any known
group takes none of this path: ``_groupfree`` (the ERM head or a reweighted one).

Notation. A head is ``(W, b)`` with ``W`` of shape (n_classes, n_features);
logits are ``X @ W.T + b``. The support set ``S`` (rows of feature space) is
what the paper's outer problem edits.
"""

from ._device import resolve_device
from ._fit import fit_hsfm
from ._runs import runs_in_one_batch
from ._tracker import EpochRecord
from ._types import ONE_STANDARD_ERROR_TAIL, AnnotatedRows, HSFMResult, HSFMSettings, Rows, RunRows

__all__ = [
    "ONE_STANDARD_ERROR_TAIL",
    "EpochRecord",
    "HSFMResult",
    "HSFMSettings",
    "AnnotatedRows",
    "Rows",
    "RunRows",
    "fit_hsfm",
    "resolve_device",
    "runs_in_one_batch",
]
