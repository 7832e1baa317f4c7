"""Building what a training run needs on the worker: device, model, trainer, starting state, data.

Where the run starts (first match wins):

1. the newest checkpoint in ``checkpoint.dir`` written by this same job (same job key): a retry
   after a lost worker, or the same job run again, continues exactly where it stopped;
2. ``checkpoint.resume_from`` with ``restart: false``: everything resumes (PyTC's default);
   with ``restart: true`` the weights only, from iteration 0 (PyTC's ``ITERATION_RESTART``);
3. ``model.init``: the weights only (fine-tuning);
4. a fresh model, initialised from ``solver.seed``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from models import checkpoint_keys as keys
from models.checkpoint import load_checkpoint
from models.errors import CheckpointError, ModelError
from models.loading import check_weights_size
from models.pytc.registry import ARCHITECTURES
from models.trainer import Trainer, TrainerConfig, seed_everything
from volumes.chunk_cache import cached
from volumes.errors import VolumeError
from volumes.open import open_volume
from volumes.sampling import CropSampler, SampledVolume, SamplingRules
from volumes.volume import Volume
from workers.confine import confined, node
from workers.errors import SpecError
from workers.training.checkpoint_dir import TrainingDir
from workers.training.data import BatchMaker
from workers.training.job import TrainingJob, TrainingModelInfo, VolumeRef

log = logging.getLogger(__name__)

Origin = Literal["own", "resume_from", "restart", "init", "fresh"]


@contextmanager
def about(field: str) -> Iterator[None]:
    """Errors of the model or data layer inside become :class:`SpecError` naming ``field``."""
    try:
        yield
    except (ModelError, VolumeError) as err:
        raise SpecError(field, str(err)) from err


_BUILD_LOCK = threading.Lock()


def build_model(job: TrainingJob) -> nn.Module:
    """The architecture from ``model.config``, initialised from ``solver.seed``; its channels must
    give one output per target channel."""
    build = ARCHITECTURES.get(job.model.architecture)
    if build is None:
        raise SpecError(
            "model.architecture",
            f"unknown architecture {job.model.architecture!r}; known: {sorted(ARCHITECTURES)}",
        )
    with about("model.config"):  # the weights counted on the meta device, before any is made
        check_weights_size(build, job.model.config_dict(), job.model.architecture)
    # The initial weights come from torch's process-wide generator. A worker builds models on
    # several threads at once (a training task seceded from the pool, and the service's pre-flight
    # of another submission beside it): one lock, and a forked generator, so no build draws from
    # another's stream and none leaves the process's generator changed.
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        seed_everything(job.solver.seed)
        with about("model.config"):
            model = build(job.model.config_dict())
    out_channels = getattr(model, "out_channels", None)
    if out_channels != job.out_channels:
        kinds = [h.kind for h in job.heads]
        raise SpecError(
            "model.config.out_channels",
            f"the model gives {out_channels} channel(s); targets {kinds} need {job.out_channels} "
            f"({' + '.join(str(h.channels) for h in job.heads)})",
        )
    return model


def open_ref(ref: VolumeRef, field: str, *, labels: bool = False, roots: Sequence[str] = ()) -> Volume:
    """The volume ``ref`` names, still inside the data ``roots`` when it is opened (workers.confine)."""
    with about(field):
        confined(node(ref.path, ref.dataset), roots)
        return open_volume(ref.path, ref.dataset, labels=labels)


def check_channels(job: TrainingJob, model: nn.Module) -> TrainingModelInfo:
    image = open_ref(job.data.image, "data.image")
    channels = image.shape[0] if image.ndim == 4 else 1
    in_channels = int(getattr(model, "in_channels", channels))
    if channels != in_channels:
        raise SpecError(
            "model.config.in_channels",
            f"the model takes {in_channels} input channel(s), the image has {channels} "
            f"(shape {list(image.shape)})",
        )
    parameters = sum(p.numel() for p in model.parameters())
    return TrainingModelInfo(in_channels, job.out_channels, parameters)


def make_trainer(job: TrainingJob, model: nn.Module, device: torch.device) -> Trainer:
    solver = job.solver
    config = TrainerConfig(
        heads=job.heads,
        optimizer=solver.optimizer,
        schedule=solver.schedule,
        iterations=solver.iterations,
        clip_grad_norm=solver.clip_grad_norm,
        precision=job.compute.precision,
    )
    return Trainer(model, config, device)


@dataclass(frozen=True)
class Start:
    origin: Origin
    checkpoint: str | None  # the file the run started from
    iteration: int
    sampler: dict[str, Any]  # the checkpoint's sampler state ({} when none)
    metrics: dict[str, Any]  # the checkpoint's metrics when this job wrote it (validation history)


def find_own_checkpoint(tdir: TrainingDir) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in the folder that this job (its key) wrote."""
    listed = {i: tdir.checkpoint_path(i) for i in tdir.own_iterations()}
    candidates = sorted({**dict(tdir.checkpoints()), **listed}.items(), reverse=True)
    for _, path in candidates:
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:  # e.g. cut short by a full disk; an older one may do
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        if ckpt.get(keys.JOB_KEY) == tdir.job_key:
            return path, ckpt
    return None


def restore_start(job: TrainingJob, trainer: Trainer, tdir: TrainingDir) -> Start:
    """Load the starting state into ``trainer`` (see the module docstring for the order)."""
    own = find_own_checkpoint(tdir)
    if own is not None:
        path, ckpt = own
        with about("checkpoint.dir"):
            trainer.restore(ckpt, str(path))
        return Start(
            "own", str(path), trainer.iteration, ckpt.get(keys.SAMPLER) or {}, ckpt.get(keys.METRICS) or {}
        )
    source = job.checkpoint.resume_from
    if source is not None:
        with about("checkpoint.resume_from"):
            ckpt = load_checkpoint(source)
            if job.checkpoint.restart:
                trainer.restore_weights(ckpt, source)
                return Start("restart", source, 0, {}, {})
            trainer.restore(ckpt, source)
        return Start("resume_from", source, trainer.iteration, ckpt.get(keys.SAMPLER) or {}, {})
    if job.model.init is not None:
        with about("model.init"):
            trainer.restore_weights(load_checkpoint(job.model.init), job.model.init)
        return Start("init", job.model.init, 0, {}, {})
    return Start("fresh", None, 0, {}, {})


def check_start_weights(job: TrainingJob, trainer: Trainer) -> None:
    """Pre-flight: the weights the run would start from load strictly into the model."""
    for field, source in (
        ("checkpoint.resume_from", job.checkpoint.resume_from),
        ("model.init", job.model.init),
    ):
        if source is not None:
            with about(field):
                trainer.restore_weights(load_checkpoint(source), source)


def batch_maker(job: TrainingJob, margin: int) -> BatchMaker:
    data, sampling = job.data, job.sampling
    roots = job.data_roots
    volumes = data.volumes
    arrays = sum(3 if v.valid_mask else 2 for v in volumes)
    share = sampling.chunk_cache_bytes // arrays
    sampled = []
    for index, volume in enumerate(volumes):
        where = data.where(index)
        sampled.append(
            SampledVolume(
                cached(open_ref(volume.image, f"{where}.image", roots=roots), share),
                cached(open_ref(volume.label, f"{where}.label", labels=True, roots=roots), share),
                cached(open_ref(volume.valid_mask, f"{where}.valid_mask", labels=True, roots=roots), share)
                if volume.valid_mask
                else None,
                volume.roi,
            )
        )
    rules = SamplingRules(
        patch_size=sampling.patch_size,
        margin=margin,
        valid_ratio=sampling.valid_ratio,
        min_foreground=sampling.min_foreground,
        reject_probability=sampling.reject_probability,
        max_tries=sampling.max_tries,
    )
    with about("data"):
        sampler = CropSampler.of_volumes(sampled, rules)
    return BatchMaker(
        sampler, job.heads, data.normalize, sampling.augment, job.solver.batch_size, job.solver.seed
    )
