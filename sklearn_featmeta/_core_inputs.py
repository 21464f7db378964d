"""The crossing from the scikit-learn layer to the core: settings, and rows as tensors.

Everything the core takes is built here from the estimator's parameters and the
rows of :mod:`._rows`; nothing in the core reads an estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._core import AnnotatedRows, HSFMSettings, Rows, RunRows
from ._preprocessing import standardized
from ._rows import FitData


def core_settings(estimator, data: FitData, whitening_ridge: float | None) -> HSFMSettings:
    """The core's settings from the estimator's parameters (every field: the core has no
    defaults of its own)."""
    return HSFMSettings(
        support_size_per_class=estimator.support_size_per_class,
        inner_steps=estimator.inner_steps,
        inner_lr=None if estimator.inner_lr == "auto" else estimator.inner_lr,
        outer_lr=estimator.outer_lr,
        outer_steps=estimator.outer_steps,
        hard_set_size=estimator.hard_set_size,
        n_epochs=estimator.n_epochs,
        max_epochs=estimator.max_epochs,
        head_update=estimator.head_update,
        head_lr=estimator.head_lr,
        support_source=estimator.support_source,
        max_grad_norm=estimator.max_grad_norm,
        n_iter_no_change=estimator.n_iter_no_change,
        head_l2=estimator.head_l2,
        selection_metric=estimator.selection_metric,
        compare_unedited=estimator.compare_unedited,
        balanced_candidates=estimator.balanced_candidates,
        whitening_ridge=whitening_ridge,
        choose_whitening=estimator.whitening_ridge == "auto",
        erm_class_factor=None if estimator.class_weight is None else tuple(data.class_factor),
    )


@dataclass(frozen=True)
class Tensors:
    """NumPy arrays to tensors on one device, in the fit's floating dtype."""

    device: torch.device
    dtype: torch.dtype

    def __call__(self, array, dtype: torch.dtype | None = None) -> torch.Tensor:
        array = torch.from_numpy(np.ascontiguousarray(array))
        return array.to(device=self.device, dtype=self.dtype if dtype is None else dtype)

    def index(self, rows):
        """Row indices as a tensor (a slice stays a slice)."""
        return rows if isinstance(rows, slice) else self(rows, torch.int64)


@dataclass
class CoreRows:
    """The rows of a fit as the core takes them (standardised, on the fit's device)."""

    pool: Rows
    annotated: AnnotatedRows
    runs: list[RunRows]
    covariance_rows: tuple[torch.Tensor, torch.Tensor] | None


def core_rows(
    data: FitData,
    runs,
    covariance_rows,
    tensors: Tensors,
    *,
    n_classes: int,
    group_hard_set: bool,
    n_threads: int,
) -> CoreRows:
    """Standardise the pool and held-out rows and move every row set to ``tensors``' device.

    ``group_hard_set``: the hard set is drawn per (class, group) cell, else per class.
    """
    X, y, pool, annotated, cells = data.X, data.y, data.pool, data.annotated, data.cells
    hard_cells, n_hard_cells = (
        (cells, data.n_cells) if group_hard_set else (y[annotated], n_classes)
    )

    def standardized_rows(index):
        return tensors(standardized(X, index, data.mean, data.scale, X.dtype, n_threads))

    return CoreRows(
        pool=Rows(
            standardized_rows(pool), tensors(y[pool], torch.int64), tensors(data.weights[pool])
        ),
        annotated=AnnotatedRows(
            standardized_rows(annotated),
            tensors(y[annotated], torch.int64),
            tensors(data.weights[annotated]),
            cells=tensors(cells, torch.int64),
            n_cells=data.n_cells,
            hard_set_cells=tensors(hard_cells, torch.int64),
            n_hard_set_cells=n_hard_cells,
        ),
        runs=[
            RunRows(
                tensors.index(run.support_index),
                tensors(run.support_mass),
                tensors.index(run.shaping_rows),
                tensors.index(run.selection_rows),
            )
            for run in runs
        ],
        covariance_rows=None
        if covariance_rows is None
        else (tensors(covariance_rows[0], torch.int64), tensors(covariance_rows[1])),
    )
