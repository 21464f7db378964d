"""Hand-written optimizers of the head and support updates, batched over runs."""

from __future__ import annotations

import math

import torch


class _Adam:
    """Adam on a list of tensors, updated in place (torch's update rule, no weight decay).

    Written out rather than ``torch.optim.Adam``: a fit makes thousands of
    steps on small tensors, where torch.optim's per-step machinery (and its
    first step, which imports torch's compiler stack) cost more than the
    arithmetic.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def subset(self, index: torch.Tensor, params: list[torch.Tensor]) -> _Adam:
        """The optimiser of ``params``, the rows ``index`` of this one's (with their moments)."""
        subset = _Adam(params, self.lr, self.betas, self.eps)
        subset.first = [first[index] for first in self.first]
        subset.second = [second[index] for second in self.second]
        subset.steps = self.steps
        return subset

    def view(self, runs: slice) -> _Adam:
        """This optimiser on the runs ``runs`` only: views, so its steps update this one's
        tensors and moments (this one's step count is the caller's to advance)."""
        view = _Adam([param[runs] for param in self.params], self.lr, self.betas, self.eps)
        view.first = [first[runs] for first in self.first]
        view.second = [second[runs] for second in self.second]
        view.steps = self.steps
        return view

    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        root_correction = math.sqrt(1 - beta2**self.steps)
        for param, grad, first, second in zip(
            self.params, grads, self.first, self.second, strict=True
        ):
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = second.sqrt().div_(root_correction).add_(self.eps)
            param.addcdiv_(first, denominator, value=-step_size)


class _GradientDescent:
    """Plain gradient descent on a list of tensors, in place."""

    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr, self.steps = params, lr, 0

    def subset(self, index: torch.Tensor, params: list[torch.Tensor]) -> _GradientDescent:
        return _GradientDescent(params, self.lr)

    def view(self, runs: slice) -> _GradientDescent:
        """This optimiser on the runs ``runs`` only (views of its tensors)."""
        return _GradientDescent([param[runs] for param in self.params], self.lr)

    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        for param, grad in zip(self.params, grads, strict=True):
            param.add_(grad, alpha=-self.lr)


def _head_optimizer(params: list[torch.Tensor], head_update: str, lr: float):
    if head_update == "adam":
        return _Adam(params, lr)
    return _GradientDescent(params, lr)
