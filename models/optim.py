"""Optimizers and learning-rate schedules from their specs.

Every schedule is a ``LambdaLR`` over a pure function of the iteration (:func:`lr_factor`), so its
whole state is ``last_epoch``: a resumed run recomputes exactly the rates a straight run would use,
and PyTC's ``lr_scheduler`` key stays a small plain dict that ``weights_only`` loading accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from models.errors import ModelConfigError
from models.training_config import OptimizerSpec, ScheduleSpec


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW, Adam, or SGD with (non-Nesterov) momentum, as PyTC's solver builds them."""
    params = list(params)
    if spec.kind == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.kind == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.kind == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ModelConfigError(f"unknown optimizer {spec.kind!r}; expected adamw, adam or sgd")


def lr_factor(spec: ScheduleSpec, iterations: int) -> Callable[[int], float]:
    """``factor(i)``: the multiplier of the base learning rate for the step after ``i`` steps."""
    if spec.kind == "constant":
        return lambda i: 1.0
    if spec.kind == "step":
        milestones = sorted(spec.milestones)
        step_size = spec.step_size
        if not milestones and not step_size:
            raise ModelConfigError("a step schedule needs milestones or step_size")

        def step(i: int) -> float:
            passed = sum(1 for m in milestones if i >= m) if milestones else i // int(step_size or 1)
            return float(spec.gamma**passed)

        return step
    if spec.kind == "warmup_cosine":
        warmup, floor = spec.warmup, spec.min_lr_ratio
        span = max(1, iterations - warmup)

        def warmup_cosine(i: int) -> float:
            if i < warmup:
                alpha = i / warmup
                return spec.warmup_factor * (1.0 - alpha) + alpha
            progress = min(1.0, (i - warmup) / span)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return warmup_cosine
    raise ModelConfigError(f"unknown schedule {spec.kind!r}; expected constant, step or warmup_cosine")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, iterations: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per iteration; ``iterations`` is the run's total (for cosine)."""
    return LambdaLR(optimizer, lr_factor(spec, iterations))
