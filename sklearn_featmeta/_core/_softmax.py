"""Softmax regression in NumPy: one weighted cross-entropy with an L2 penalty, for L-BFGS.

Every head fit of the package that is not a step of the bilevel loop goes
through :class:`SoftmaxProblem`: the ERM head, the balanced candidate paths,
the group-free heads. Arrays in, arrays out; torch only for the two products
with a large ``X`` when torch has threads.
"""

from __future__ import annotations

import numpy as np
import torch

from .._blocks import BLOCK_ENTRIES

TORCH_PRODUCT_ENTRIES = BLOCK_ENTRIES
"""From this many entries of ``X`` on, with more than one torch thread, a head fit's two
products with ``X`` run in torch.

The fit holds BLAS to one thread (:mod:`._threads`); torch has the fit's
threads (``n_threads_``). Below this size, or on one thread, NumPy's
smaller call overhead wins (docs/decisions.md).
"""


class SoftmaxProblem:
    """A weighted softmax cross-entropy with an L2 penalty, for SciPy's L-BFGS-B, in NumPy.

    Head fits are small or few, where torch's per-call overhead costs more
    than the arithmetic; the two products with a large ``X`` go to torch
    when it has threads (:data:`TORCH_PRODUCT_ENTRIES`). The products with ``X`` run in ``X``'s
    dtype (float32 halves their memory traffic, the bulk of the cost), the
    rest in float64, class-major (``(n_classes, n_rows)``: reductions over
    the classes then run along rows, not over a short inner axis, which
    NumPy does slowly). ``X`` is used as given, whatever its shape: a
    change to the rows' span (where rows are fewer than features) costs a
    factorisation that a path's few dozen passes over ``X`` do not repay.

    ``factors`` (one per geometry, each of ``n_features`` or None for ``X``
    itself): one problem per geometry, on ``X`` times its factor, solved as
    their sum. Their heads are
    independent, but every pass over ``X`` (the cost) serves all of them,
    and L-BFGS on the sum takes about as many steps as the slowest one
    alone. Heads come back in those coordinates, one per geometry, stacked.

    ``binary`` (two classes): the first class's logit is held at zero, so a
    head is one row, the logit of the second class against the first, as
    ``LogisticRegression``'s for two classes (and its penalty the same).
    """

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        row_weight: np.ndarray,
        n_classes: int,
        factors: list[np.ndarray | None] | None = None,
        binary: bool = False,
    ):
        self.X = np.ascontiguousarray(X)
        threaded = X.size >= TORCH_PRODUCT_ENTRIES and torch.get_num_threads() > 1
        self.X_torch = torch.from_numpy(self.X) if threaded else None
        self.Y = np.eye(n_classes)[:, y]  # one-hot, class-major
        self.weight = row_weight
        self.factors = None
        if factors is not None:  # one row per geometry; None: X itself
            ones = np.ones(X.shape[1])
            self.factors = np.stack([ones if f is None else f for f in factors]).astype(np.float64)
        n_geometries = 1 if factors is None else self.factors.shape[0]
        self.binary = binary and n_classes == 2
        self.shape = (n_geometries, 1 if self.binary else n_classes, X.shape[1] + 1)

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape).ravel()

    def _products(self, left: np.ndarray, right_of_X: bool) -> np.ndarray:
        """``left @ X.T`` (logits, class-major) or ``left @ X`` (gradient), in ``X``'s dtype."""
        left = left.astype(self.X.dtype)
        if self.X_torch is None:
            if right_of_X:
                # as (X left^T)^T: the same bits as left @ X.T, which BLAS computes
                # several times slower from two rows of left on (docs/decisions.md)
                return np.ascontiguousarray((self.X @ left.T).T)
            return left @ self.X
        X, left = self.X_torch, torch.from_numpy(left)
        if right_of_X:
            # as (X left^T)^T: torch spreads that product over X's rows, on all its threads
            return (X @ left.T).numpy().T
        return product_over_row_blocks(left, X).numpy()

    def _loss_and_gradient(self, flat, l2):
        n_geometries, n_rows, n_columns = self.shape
        params = flat.reshape(self.shape)
        W, b = params[:, :, :-1], params[:, :, -1]
        # logits X (W f)^T of every geometry from one product with X
        heads = W if self.factors is None else W * self.factors[:, None, :]
        logits = self._products(heads.reshape(-1, n_columns - 1), right_of_X=True)
        logits = logits.reshape(n_geometries, n_rows, -1) + b[:, :, None]
        if self.binary:
            loss, residual = self._binary_loss_and_residual(logits)
        else:
            loss, residual = self._loss_and_residual(logits)
        # below the smallest normal number of X's dtype a residual is rounding: zeroed, the
        # product with X never meets subnormal inputs (which x86 can process far slower)
        residual[np.abs(residual) < np.finfo(self.X.dtype).tiny] = 0.0
        gradient = np.empty(self.shape)
        products = self._products(residual.reshape(-1, residual.shape[2]), right_of_X=False)
        products = products.reshape(W.shape)
        if self.factors is not None:
            products *= self.factors[:, None, :]
        gradient[:, :, :-1] = products + l2 * W
        gradient[:, :, -1] = residual.sum(2)
        return loss + 0.5 * l2 * np.square(W).sum(), gradient.ravel()

    def _loss_and_residual(self, logits):
        """The cross-entropy and ``(p - Y) * weight`` of class-major logits."""
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        residual = (np.exp(log_p) - self.Y) * self.weight
        return -(self.weight * self.Y * log_p).sum(), residual

    def _binary_loss_and_residual(self, logits):
        """The same for the second class's logit against the first (``binary``), in the
        logistic form ``log(1 + e^z) - y z``: one row of arithmetic where the softmax form
        has two, and no normalisation."""
        positive = self.Y[1]
        softplus = np.logaddexp(0.0, logits)
        loss = (self.weight * (softplus - positive * logits)).sum()
        return loss, (np.exp(logits - softplus) - positive) * self.weight

    def minimize(
        self,
        l2: float,
        start: np.ndarray,
        *,
        max_iter: int = 200,
        tol: float = 1e-5,
        gradient_stop: bool = False,
        memory: int = 10,
    ):
        """``((W, b), converged, solution)`` from flat parameters ``start`` (``solution`` is flat).

        ``W`` and ``b`` are one geometry's, or, with ``factors``, every
        geometry's stacked (a leading axis). L-BFGS stops when the gradient
        is within ``tol`` or, unless ``gradient_stop``, when the loss stops
        falling by more than ``X``'s rounding (in float32 that can be well
        short of ``LogisticRegression``'s head, which stops on ``tol`` alone).
        ``memory``: the number of past steps L-BFGS keeps (SciPy's ``maxcor``;
        10, its default, is also ``LogisticRegression``'s).
        """
        import scipy.optimize  # a dependency; torch.optim's first step imports a compiler stack

        result = scipy.optimize.minimize(
            self._loss_and_gradient,
            start,
            args=(l2,),
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": max_iter,
                "maxcor": memory,
                "gtol": tol,
                "ftol": 64 * np.finfo(np.float64 if gradient_stop else self.X.dtype).eps,
            },
        )
        params = result.x.reshape(self.shape)
        W, b = params[:, :, :-1].copy(), params[:, :, -1].copy()
        if self.factors is None:
            W, b = W[0], b[0]
        return (W, b), result.nit < max_iter, result.x


def product_over_row_blocks(left: torch.Tensor, X: torch.Tensor, n_blocks: int = 8) -> torch.Tensor:
    """``left @ X`` for a short ``left``, as a sum over blocks of ``X``'s rows.

    Torch computes a product this thin on one thread; as a batch of blocks
    (a batched product, then a sum in block order) it runs on all of them.
    """
    n_blocks = min(n_blocks, X.shape[0])
    n_rows = X.shape[0] // n_blocks * n_blocks
    blocks = torch.bmm(
        left[:, :n_rows].reshape(left.shape[0], n_blocks, -1).transpose(0, 1),
        X[:n_rows].reshape(n_blocks, -1, X.shape[1]),
    )
    return torch.addmm(blocks.sum(0), left[:, n_rows:], X[n_rows:])


def softmax_regression_paths(
    X: np.ndarray,
    y: np.ndarray,
    row_weight: np.ndarray,
    n_classes: int,
    l2_path,
    factors: list[np.ndarray | None],
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Softmax logistic regressions for every L2 strength of ``l2_path``, in several geometries.

    Geometry ``g`` is ``X`` times ``factors[g]`` (None: ``X`` itself). Each
    fit minimises the objective of :func:`fit_softmax_head` (``row_weight``
    summing to one) and warm-starts from the previous one, so ``l2_path``
    should run from strong to weak. Returns one path per geometry, its
    heads in that geometry's coordinates. The geometries are solved
    together (:class:`SoftmaxProblem`'s ``factors``: each pass over ``X``
    serves all of them).
    """
    return regression_paths(SoftmaxProblem(X, y, row_weight, n_classes, factors), l2_path)


def regression_paths(problem: SoftmaxProblem, l2_path) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """:func:`softmax_regression_paths` of a problem built already (every geometry of its
    ``factors``)."""
    start, paths = problem.zeros(), [[] for _ in range(problem.shape[0])]
    for l2 in l2_path:
        (W, b), _, start = problem.minimize(l2, start)
        for geometry, path in enumerate(paths):
            path.append((W[geometry], b[geometry]))
    return paths


def problem_of_tensors(X, y, row_weight, n_classes: int, factors=None) -> SoftmaxProblem:
    """The problem of rows held as torch tensors (on any device): the one crossing of a head
    fit from torch to NumPy; :func:`head_as_tensors` is the way back."""
    if factors is not None:
        factors = [None if f is None else f.cpu().numpy() for f in factors]
    return SoftmaxProblem(
        X.cpu().numpy(), y.cpu().numpy(), row_weight.double().cpu().numpy(), n_classes, factors
    )


def head_as_tensors(head, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A head ``(W, b)`` solved in NumPy, back on ``like``'s device and in its dtype."""
    return tuple(torch.from_numpy(part).to(like).contiguous() for part in head)
