"""The training step and its exact state: model, optimizer, schedule, grad scaler, iteration, RNGs.

:meth:`Trainer.training_state` captures everything that decides the next steps; restoring it into a
fresh trainer (:meth:`Trainer.restore`) and feeding the same batches gives bitwise the same weights
as never stopping (on CPU, same thread count). :meth:`Trainer.restore_weights` is PyTC's
``ITERATION_RESTART`` and ``model.init``: weights only, iteration 0, fresh optimizer and schedule.

No storage IO: checkpoints are dicts in and out; :mod:`models.checkpoint` reads and writes them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from models import checkpoint_keys as keys
from models.checkpoint import extract_state_dict, load_weights, unwrap_module
from models.errors import CheckpointError, ModelError
from models.losses import heads_loss
from models.optim import build_optimizer, build_scheduler, lr_factor
from models.training_config import HeadSpec, OptimizerSpec, RegularizerSpec, ScheduleSpec

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16", "float16"]
ArrayLike = NDArray[np.float32] | torch.Tensor


class TrainingDivergedError(ModelError, ArithmeticError):
    """The loss became NaN or infinite; the message names the iteration."""


@dataclass(frozen=True)
class TrainerConfig:
    heads: tuple[HeadSpec, ...]
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    iterations: int  # the run's total, which a cosine schedule spans
    clip_grad_norm: float | None = None
    precision: Precision = "float32"
    regularizers: tuple[RegularizerSpec, ...] = ()  # PyTC's MODEL.REGU_OPT, added to the loss


@dataclass(frozen=True)
class StepStats:
    iteration: int  # iterations completed, this step included
    loss: float
    head_losses: tuple[float, ...]  # each head's, then each regulariser's (weighted)
    lr: float  # the learning rate this step used
    grad_norm: float | None = None


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One model, its optimizer, schedule and grad scaler; :meth:`step` runs one iteration."""

    def __init__(self, model: nn.Module, config: TrainerConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config.schedule, config.iterations)
        use_scaler = config.precision == "float16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.iteration = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, image: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None) -> StepStats:
        """One optimisation step on a batch: image (n, c, z, y, x), targets (n, channels, z, y, x)."""
        self.model.train()
        x, y = self._tensor(image), self._tensor(targets)
        m = self._tensor(mask) if mask is not None else None
        lr = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(x)
        loss, parts = heads_loss(logits.float(), y, self.config.heads, m, self.config.regularizers)
        value = float(loss.detach())
        if not np.isfinite(value):
            raise TrainingDivergedError(f"the loss is {value} at iteration {self.iteration + 1}")
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        grad_norm = None
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            grad_norm = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return StepStats(self.iteration, value, tuple(float(p.detach()) for p in parts), lr, grad_norm)

    def logits(self, image: ArrayLike) -> torch.Tensor:
        """The model's logits in eval mode, without gradients (validation); back to train mode after."""
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self.model(self._tensor(image)).float()
        finally:
            self.model.train()

    def training_state(self) -> dict[str, Any]:
        """PyTC's keys (``state_dict``, ``optimizer``, ``lr_scheduler``, ``iteration``) and ours
        (``grad_scaler``, ``rng``); plain tensors and containers, so ``weights_only`` loads them."""
        return {
            keys.STATE_DICT: unwrap_module(self.model).state_dict(),
            keys.OPTIMIZER: self.optimizer.state_dict(),
            keys.LR_SCHEDULER: self.scheduler.state_dict(),
            keys.ITERATION: self.iteration,
            keys.GRAD_SCALER: self.scaler.state_dict(),
            keys.RNG: capture_rng_states(),
        }

    def restore(self, ckpt: Mapping[str, Any], path: str | None = None) -> None:
        """Continue from ``ckpt``: weights, optimizer, schedule, scaler, iteration and RNG states.

        A checkpoint of PyTC itself has no RNG or scaler state and a scheduler of its own kind: the
        schedule is then re-derived at the scheduler's own ``last_epoch`` (PyTC saves before its
        last step of the schedule, so one behind ``iteration``, and resumes from there; so do we),
        and the resume is close, not exact.
        """
        where = f"checkpoint {path}" if path else "checkpoint"
        load_weights(unwrap_module(self.model), extract_state_dict(ckpt, path), path)
        iteration = _iteration(ckpt, where)
        try:
            self.optimizer.load_state_dict(ckpt[keys.OPTIMIZER])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            hint = ""
            saved = ckpt.get(keys.OPTIMIZER)
            groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
            if isinstance(groups, list) and len(groups) != len(self.optimizer.param_groups):
                other = "pytc" if self.config.optimizer.param_groups == "one" else "one"
                hint = f" (it has {len(groups)} parameter groups: solver.param_groups: {other}?)"
            raise CheckpointError(
                f"{where}: its optimizer state does not fit a {self.config.optimizer.kind} optimizer "
                f"over this model ({type(err).__name__}: {err}){hint}; resume with restart: true for "
                "weights only"
            ) from err
        exact = keys.RNG in ckpt
        if exact:
            self.scheduler.load_state_dict(ckpt[keys.LR_SCHEDULER])
        else:
            self._derive_schedule(_scheduler_position(ckpt.get(keys.LR_SCHEDULER), iteration))
            logger.warning("%s has no RNG or sampler state (PyTC's own?): the resume is not exact", where)
        if ckpt.get(keys.GRAD_SCALER):
            self.scaler.load_state_dict(ckpt[keys.GRAD_SCALER])
        if exact:
            restore_rng_states(ckpt[keys.RNG])
        self.iteration = iteration

    def restore_weights(self, ckpt: Mapping[str, Any], path: str | None = None) -> None:
        """Weights only (fine-tuning, ``restart: true``): iteration, optimizer and schedule stay fresh."""
        load_weights(unwrap_module(self.model), extract_state_dict(ckpt, path), path)

    def _derive_schedule(self, position: int) -> None:
        factor = lr_factor(self.config.schedule, self.config.iterations)
        self.scheduler.last_epoch = position
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor(position)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _tensor(self, value: ArrayLike) -> torch.Tensor:
        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        return tensor.to(self.device, non_blocking=True)

    def _autocast(self) -> torch.autocast:
        precision = self.config.precision
        dtype = torch.float16 if precision == "float16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=precision != "float32")


def _scheduler_position(state: Any, iteration: int) -> int:
    """The schedule's ``last_epoch`` in a foreign checkpoint's scheduler state, when it is a count
    of at most ``iteration``; else ``iteration``."""
    value = state.get("last_epoch") if isinstance(state, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= iteration:
        return value
    return iteration


def _iteration(ckpt: Mapping[str, Any], where: str) -> int:
    value = ckpt.get(keys.ITERATION)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{where} has no valid 'iteration' (found {value!r})")
    return value


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy's global and Python's ``random`` states as tensors and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    internal: Sequence[int] = [int(v) for v in python_state["state"].tolist()]
    random.setstate((python_state["version"], tuple(internal), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
