"""``pytc run`` for ``kind: training``: pre-flight on a worker, train with a progress line, register.

Exit codes as for inference: 0 trained (the final checkpoint's path on stdout), 1 the job failed,
2 the job cannot work as written (the message names the field), 130 cancelled or interrupted (a
checkpoint was saved; running the same job again continues from it).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path

from distributed import Client

from service.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, _spec_failure, start_up_done
from service.errors import JobCancelledError, JobFailedError
from service.model_file_registry import FileModelRegistry
from service.progress import format_duration
from service.training_progress import TrainingProgressLine
from service.training_runner import TrainingResult, run_training
from workers.errors import SpecError
from workers.training.checks import validate_training_against_model
from workers.training.job import TrainingJob
from workers.training.tasks import inspect_training


def train_on(
    job: TrainingJob,
    client: Client,
    cancel: threading.Event,
    registry: FileModelRegistry,
    *,
    quiet: bool,
    report: Path | None = None,
) -> int:
    try:
        info = client.submit(inspect_training, job, pure=False, resources={"GPU": 1}).result()
        validate_training_against_model(job, info)
    except SpecError as err:
        return _spec_failure(err)
    start_up_done()
    line = None if quiet else TrainingProgressLine(sys.stderr)
    try:
        result = run_training(job, client, on_progress=line, cancel=cancel, register=registry.register)
    except JobCancelledError as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SpecError as err:
        return _spec_failure(err)
    except JobFailedError as err:
        print(f"error: the job failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if line is not None:
            line.close()
    if not quiet:
        print(summary(result, registry), file=sys.stderr)
    if report is not None:
        report.write_text(json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True))
    print(result.checkpoint)
    return EXIT_OK


def summary(result: TrainingResult, registry: FileModelRegistry) -> str:
    """What a user wants to know at the end: the checkpoint, where the run began, how good it is."""
    took = format_duration(result.seconds)
    lines = [
        f"succeeded: {result.checkpoint} (iteration {result.iteration}) in {took}, "
        f"{result.iterations_per_second:.2f} it/s, data loader waits {100 * result.loader_wait_fraction:.0f}%"
    ]
    if result.resumed_from is not None:
        lines.append(f"resumed from {result.resumed_from} (iteration {result.start_iteration})")
    if result.attempts > 1:
        lines.append(f"{result.attempts} attempts (a worker was lost or the job was run again)")
    if result.validation:
        last = result.validation[-1]
        lines.append(f"validation at {last['iteration']}: Dice {last['dice']:.4f}, IoU {last['iou']:.4f}")
    if result.registered_as is not None:
        lines.append(f"registered as {result.registered_as!r} in {registry.path}")
    return "\n".join(lines)
