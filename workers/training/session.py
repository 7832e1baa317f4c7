"""The training session behind :func:`workers.training.tasks.run_training_task`: the loop, its
checkpoints, progress records, validation and the outcome.

It reports through files in the checkpoint folder (:mod:`workers.training.checkpoint_dir`): progress every
half second, and a cancel flag checked before every iteration (then it saves a checkpoint and
stops). It always starts from the newest checkpoint of this same job (see
:mod:`workers.training.setup`), so when Dask retries it after a lost worker, it continues.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch

from models import checkpoint_keys as keys
from models.checkpoint import save_checkpoint
from models.devices import pick_device
from models.errors import ModelError
from models.loading import file_sha256
from models.targets import target_margin
from volumes.box import Box
from volumes.errors import VolumeError
from workers.confine import confined
from workers.errors import SpecError
from workers.runtime.affinity import torch_threads
from workers.runtime.allocator import tune_allocator
from workers.training.checkpoint_dir import TrainingDir
from workers.training.data import ForegroundBudget, Prefetcher
from workers.training.evaluation import evaluate
from workers.training.job import TrainingJob, TrainingModelInfo, TrainingOutcome, ValidationScore
from workers.training.setup import (
    batch_maker,
    build_model,
    check_channels,
    check_start_weights,
    make_trainer,
    open_ref,
    restore_start,
)

log = logging.getLogger(__name__)

SAMPLER_STATE_VERSION = 1
PROGRESS_INTERVAL_S = 0.5


def inspect(job: TrainingJob) -> TrainingModelInfo:
    """Pre-flight: the model builds, fits the image and the targets, and the starting weights load
    strictly. Raises :class:`SpecError` naming the field."""
    model = build_model(job)
    info = check_channels(job, model)
    check_start_weights(job, make_trainer(job, model, torch.device("cpu")))
    return info


def train(job: TrainingJob) -> TrainingOutcome:
    """Train to ``solver.iterations`` (or until cancelled), from the newest own checkpoint if any."""
    tdir = TrainingDir(Path(job.checkpoint.dir), job.job_key())
    started = time.perf_counter()
    tune_allocator()
    torch.set_num_threads(job.compute.threads or torch_threads())
    try:
        return _Session(job, tdir).run()
    except (SpecError, ModelError, VolumeError) as err:
        # Deterministic: a retry would fail the same way, so this is a result, not an exception.
        field = err.field if isinstance(err, SpecError) else None
        log.error("training job %s failed: %s", tdir.job_key, err)
        tdir.write_progress({**(tdir.read_progress() or {}), "state": "failed", "error": str(err)})
        return TrainingOutcome(
            "failed",
            iterations=job.solver.iterations,
            seconds=time.perf_counter() - started,
            error=str(err),
            error_field=field,
        )


class _Meter:
    """Rates and recent losses of this attempt."""

    def __init__(self, start: int) -> None:
        self.start_iteration = start
        self.started = time.perf_counter()
        self.waited = 0.0
        self.steps = 0
        self.window: list[tuple[float, float]] = []  # (time, loss) since the last report
        self.last_report = 0.0
        self.last_loss: float | None = None
        self.rate = 0.0

    def step(self, loss: float, waited: float) -> None:
        self.steps += 1
        self.waited += waited
        self.window.append((time.perf_counter(), loss))

    def report_due(self) -> bool:
        return time.perf_counter() - self.last_report >= PROGRESS_INTERVAL_S

    def summary(self) -> dict[str, Any]:
        now = time.perf_counter()
        if self.window:
            self.last_loss = sum(loss for _, loss in self.window) / len(self.window)
            span = now - (self.last_report or self.started)
            self.rate = len(self.window) / span if span > 0 else 0.0
        self.window, self.last_report = [], now
        elapsed = now - self.started
        return {
            "loss": self.last_loss,
            "iterations_per_second": self.rate,
            "mean_iterations_per_second": self.steps / elapsed if elapsed > 0 else 0.0,
            "loader_wait_fraction": self.waited / elapsed if elapsed > 0 else 0.0,
            "elapsed_s": elapsed,
        }


class _Session:
    def __init__(self, job: TrainingJob, tdir: TrainingDir) -> None:
        self.job, self.tdir = job, tdir
        self.device = pick_device(job.compute.device)
        model = build_model(job)
        check_channels(job, model)
        self.trainer = make_trainer(job, model, self.device)
        self.start = restore_start(job, self.trainer, tdir)
        sampler = self.start.sampler
        self.budget = ForegroundBudget(
            job.sampling.budget, job.sampling.min_foreground, int(sampler.get("misses_in_a_row", 0))
        )
        self.maker = batch_maker(job, target_margin(job.heads))
        self.scores = [_score(s) for s in self.start.metrics.get("validation", [])]
        self.saved: tuple[int, str] | None = None
        if self.start.origin == "own" and self.start.checkpoint:
            self.saved = (self.start.iteration, self.start.checkpoint)
        previous = tdir.read_progress() or {}
        self.attempts: list[dict[str, Any]] = list(previous.get("attempts", []))
        self.attempts.append(
            {
                "attempt": len(self.attempts) + 1,
                "origin": self.start.origin,
                "checkpoint": self.start.checkpoint,
                "start_iteration": self.start.iteration,
                "started_at": time.time(),
            }
        )
        self.meter = _Meter(self.trainer.iteration)
        log.info(
            "training job %s: start at iteration %d (%s %s)",
            tdir.job_key,
            self.trainer.iteration,
            self.start.origin,
            self.start.checkpoint or "",
        )

    def run(self) -> TrainingOutcome:
        total, trainer = self.job.solver.iterations, self.trainer
        self._progress("training")
        if trainer.iteration < total:
            sampling = self.job.sampling
            prefetch = Prefetcher(
                self.maker.make, trainer.iteration, total, sampling.prefetch_threads, sampling.prefetch_depth
            )
            try:
                if not self._loop(prefetch):
                    return self._outcome("cancelled", self._save())
            finally:
                prefetch.close()
            if self.job.validation is not None and (not self.scores or self.scores[-1].iteration != total):
                self._validate()
        final = self._save()
        self._progress("finished")
        return self._outcome("finished", final)

    def _loop(self, prefetch: Prefetcher) -> bool:
        """Steps until the last iteration; False when a cancel stopped it."""
        job, trainer, tdir = self.job, self.trainer, self.tdir
        save_every = job.solver.save_every
        every = job.validation.every if job.validation is not None else 0
        where = ", ".join(f"{v.label.path} ({v.label.dataset or '/'})" for v in job.data.volumes)
        while trainer.iteration < job.solver.iterations:
            if tdir.is_cancelled():
                log.info("training job %s: cancelled at iteration %d", tdir.job_key, trainer.iteration)
                return False
            batch, waited = prefetch.next()
            self.budget.account(batch, where)
            stats = trainer.step(batch.image, batch.targets, batch.mask)
            self.meter.step(stats.loss, waited)
            done = stats.iteration
            last = done == job.solver.iterations
            if save_every and done % save_every == 0 and not last:
                self._save()
            if every and done % every == 0 and not last:
                self._validate()
            if self.meter.report_due() and not last:
                self._progress("training")
        return True

    def _validate(self) -> None:
        spec = self.job.validation
        if spec is None:
            return
        self._progress("validating")
        image, label = (
            open_ref(spec.image, "validation.image", roots=self.job.data_roots),
            open_ref(spec.label, "validation.label", labels=True, roots=self.job.data_roots),
        )
        roi = spec.roi or Box.of_shape(tuple(image.shape[-3:]))
        score = evaluate(
            self.trainer.logits,
            image,
            label,
            roi,
            self.job.sampling.patch_size,
            self.job.heads,
            self.job.data.normalize,
            spec.threshold,
            self.trainer.iteration,
        )
        log.info("validation at %d: dice %.4f iou %.4f", score.iteration, score.dice, score.iou)
        self.scores.append(score)

    def _save(self) -> str:
        """Checkpoint the current state (once per iteration), record it as this job's, prune."""
        iteration = self.trainer.iteration
        if self.saved is not None and self.saved[0] == iteration:
            return self.saved[1]
        self._progress("saving")
        path = self.tdir.checkpoint_path(iteration)
        confined(path, self.job.data_roots)  # the folder was not swapped for a symlink out of the roots
        confined(self.tdir.index_path, self.job.data_roots)
        save_checkpoint(path, self._payload())
        self.tdir.record_checkpoint(iteration)
        self.saved = (iteration, str(path))
        for old in self.tdir.prune(self.job.checkpoint.keep_last, keep={iteration}):
            log.info("pruned %s", old)
        return str(path)

    def _payload(self) -> dict[str, Any]:
        job = self.job
        payload = self.trainer.training_state()
        payload.update(
            {
                keys.SAMPLER: {
                    "kind": "indexed",
                    "version": SAMPLER_STATE_VERSION,
                    "seed": job.solver.seed,
                    "next_batch": self.trainer.iteration,
                    "misses_in_a_row": self.budget.in_a_row,
                },
                keys.ARCHITECTURE: job.model.architecture,
                keys.CONFIG: job.model.config_dict(),
                keys.HEADS: [h.to_json() for h in job.heads],
                keys.JOB_KEY: self.tdir.job_key,
                keys.JOB: json.loads(job.document),
                keys.METRICS: {"loss": self.meter.last_loss, "validation": [asdict(s) for s in self.scores]},
                keys.TRAINING: {
                    "normalize": asdict(job.data.normalize),
                    "patch_size": list(job.sampling.patch_size),
                    "torch_version": str(torch.__version__),
                },
            }
        )
        return payload

    def _progress(self, state: str) -> None:
        record = {
            "state": state,
            "iteration": self.trainer.iteration,
            "total": self.job.solver.iterations,
            "lr": self.trainer.lr,
            **self.meter.summary(),
            "attempts": self.attempts,
            "validation": [asdict(s) for s in self.scores],
            "last_checkpoint": self.saved[1] if self.saved else None,
        }
        confined(self.tdir.progress_path, self.job.data_roots)
        self.tdir.write_progress(record)

    def _outcome(self, status: Literal["finished", "cancelled"], checkpoint: str) -> TrainingOutcome:
        summary = self.meter.summary()
        if status == "cancelled":
            self._progress("cancelled")
        resumed = self.start.checkpoint if self.start.origin in ("own", "resume_from") else None
        return TrainingOutcome(
            status,
            iteration=self.trainer.iteration,
            iterations=self.job.solver.iterations,
            checkpoint=checkpoint,
            sha256=file_sha256(checkpoint),
            start_iteration=self.start.iteration,
            resumed_from=resumed,
            loss=self.meter.last_loss,
            lr=self.trainer.lr,
            iterations_per_second=summary["mean_iterations_per_second"],
            loader_wait_fraction=summary["loader_wait_fraction"],
            seconds=summary["elapsed_s"],
            validation=tuple(self.scores),
        )


def _score(record: dict[str, Any]) -> ValidationScore:
    per_head = tuple((str(k), float(d), float(i)) for k, d, i in record.get("per_head", ()))
    return ValidationScore(int(record["iteration"]), float(record["dice"]), float(record["iou"]), per_head)
