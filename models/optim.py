"""Optimizers and learning-rate schedules from their specs.

Every schedule is a ``LambdaLR`` over a pure function of the iteration (:func:`lr_factor`), so its
whole state is ``last_epoch``: a resumed run recomputes exactly the rates a straight run would use,
and PyTC's ``lr_scheduler`` key stays a small plain dict that ``weights_only`` loading accepts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from models.errors import ModelConfigError
from models.training_config import OptimizerSpec, ScheduleSpec

_NORM_LAYERS = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def parameter_groups(model: torch.nn.Module, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``spec.param_groups``.

    ``one``: every trainable parameter in one group. ``pytc``: the layout of PyTC v1's solver, whose
    ``Trainer`` loads an optimizer state only into groups of the same count and sizes: one group per
    trainable parameter, in ``model.modules()`` order (each parameter once), the parameters of
    normalisation layers with ``spec.weight_decay_norm`` (PyTC's ``WEIGHT_DECAY_NORM``, default 0),
    other biases at ``lr * spec.bias_lr_factor`` with ``spec.weight_decay_bias``
    (``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``: 1 and 0), and ``spec.weight_decay`` for the rest.
    """
    if spec.param_groups == "one":
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = spec.lr, spec.weight_decay
            if isinstance(module, _NORM_LAYERS):
                decay = spec.weight_decay_norm
            elif name == "bias":
                lr, decay = spec.lr * spec.bias_lr_factor, spec.weight_decay_bias
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    return groups


def build_optimizer(model: torch.nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW, Adam, or SGD with (non-Nesterov) momentum, as PyTC's solver builds them, over
    :func:`parameter_groups`."""
    groups = parameter_groups(model, spec)
    if spec.kind == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.kind == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.kind == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
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
    if spec.kind == "pytc_warmup_cosine":
        warmup = spec.warmup
        total = max(1, iterations)

        def pytc_warmup_cosine(i: int) -> float:
            ramp = spec.warmup_factor * (1.0 - i / warmup) + i / warmup if i < warmup else 1.0
            return ramp * 0.5 * (1.0 + math.cos(math.pi * i / total))

        return pytc_warmup_cosine
    if spec.kind == "pytc_warmup_step":
        warmup, milestones = spec.warmup, sorted(spec.milestones)

        def pytc_warmup_step(i: int) -> float:
            ramp = spec.warmup_factor * (1.0 - i / warmup) + i / warmup if i < warmup else 1.0
            return float(ramp * spec.gamma ** bisect.bisect_right(milestones, i))

        return pytc_warmup_step
    raise ModelConfigError(
        f"unknown schedule {spec.kind!r}; expected constant, step, warmup_cosine, pytc_warmup_cosine "
        "or pytc_warmup_step"
    )


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, iterations: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per iteration; ``iterations`` is the run's total (for cosine)."""
    return LambdaLR(optimizer, lr_factor(spec, iterations))
