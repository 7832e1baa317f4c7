"""``kind: pytc_config``: a PyTorch Connectomics v1 configuration, run as the job it converts to.

The document holds PyTC's own files as text, and what PyTC's ``main.py`` takes beside them::

    {"kind": "pytc_config", "base": "<--config-base YAML>", "experiment": "<--config-file YAML>",
     "overrides": ["INFERENCE.OUTPUT_PATH", "out/"], "inference": true,
     "checkpoint": "runs/checkpoint_100000.pth.tar"}

Parsing converts it (:mod:`service.pytc`: yacs rules over PyTC's defaults, every key mapped or
refused by name) into an inference or a training document and parses that with its own kind; the
job is then that kind's job, and admission, the run, the target and the summary are that kind's.
A config naming several input volumes (``IMAGE_NAME: a.h5@b.h5``) is one inference job per volume,
as PyTC predicts each: all admitted first, then run in turn (docs/pytc.md, "Several volumes").
A problem found in the converted document names the PyTC key it came from (``MODEL.INPUT_SIZE
(window.patch_size): ...``), so a PyTC user reads their own names. ``pytc run --pytc-config`` builds
this same document from the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from service.documents.sections import Root, Section, StrictBool, Text, require_kind, resolve_path, validate
from service.errors import JobFailedError, PathOutsideRootsError, SpecError
from service.kinds.base import AdmitEnv, JobKind, ParseEnv, RunEnv, Summary, Target
from service.pytc.convert import Conversion, convert_pytc
from service.pytc.model import CONFIG_KEYS

YamlText = Annotated[str, Field(strict=True, min_length=1, max_length=1 << 16)]  # PyTC's are < 5 KB
Override = Annotated[str, Field(strict=True, max_length=1024)]


class PytcConfigDocument(Section):
    """A PyTorch Connectomics v1 experiment: `base` (PyTC's --config-base) and `experiment`
    (--config-file) as YAML text, `overrides` as PyTC's trailing KEY VALUE options, `inference`
    as its --inference (else a training job), `checkpoint` as its --checkpoint."""

    kind: Literal["pytc_config"]
    base: YamlText
    experiment: YamlText | None = None
    overrides: Annotated[list[Override], Field(max_length=64)] = []  # with the texts, well within a request
    inference: StrictBool = False
    checkpoint: Text | None = None


@dataclass(frozen=True)
class PytcJob:
    """The converted jobs (one per input volume PyTC predicts, else one): the kind that runs them,
    the parsed jobs in PyTC's order, and what the conversion said."""

    kind: str
    jobs: tuple[Any, ...]
    conversion: Conversion

    @property
    def job(self) -> Any:
        """The first volume's job (the only one, but for several volumes)."""
        return self.jobs[0]


def first_hdf5_dataset(roots: Sequence[Root]) -> Any:
    """PyTC reads an HDF5 file's first dataset when none is named (``readh5``): its name, from
    the file's index (no data is read); None when the file is not there yet or not HDF5."""

    def first(raw: str) -> str | None:
        try:
            path = resolve_path(raw, roots, "DATASET.IMAGE_NAME")
        except SpecError:
            return None  # the converted document names the path; parsing it refuses with the reason
        try:
            import h5py

            with h5py.File(path, "r") as f:
                names = list(f)
        except OSError:
            return None
        return str(names[0]) if names else None

    return first


def convert_document(doc: Mapping[str, Any], roots: Sequence[Root]) -> Conversion:
    parsed = validate(PytcConfigDocument, require_kind(doc, "pytc_config"))
    texts = [("base", parsed.base)] + ([("experiment", parsed.experiment)] if parsed.experiment else [])
    return convert_pytc(
        texts,
        parsed.overrides,
        inference=parsed.inference,
        checkpoint=parsed.checkpoint,
        first_dataset=first_hdf5_dataset(roots),
    )


class PytcConfigKind:
    name = "pytc_config"
    document = PytcConfigDocument

    def _inner(self, job: PytcJob) -> JobKind[Any]:
        from service.kinds import job_kind

        return job_kind(job.kind)

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> PytcJob:
        from service.kinds import job_kind

        conversion = convert_document(doc, env.roots)
        kind = str(conversion.document["kind"])
        jobs = []
        for document in conversion.documents:
            with pytc_names(document):
                jobs.append(job_kind(kind).parse(document, env))
        return PytcJob(kind, tuple(jobs), conversion)

    def target(self, job: PytcJob) -> Target:
        """The first volume's output; with several volumes, the output container and its datasets
        (PyTC's ``vol0``, ``vol1``, ...; or, under ``DO_SINGLY``, one output each: their paths)."""
        targets = [self._inner(job).target(one) for one in job.jobs]
        if len(targets) == 1:
            return targets[0]
        paths = sorted({t.path for t in targets})
        if len(paths) == 1:
            return Target(paths[0], ", ".join(t.what for t in targets))
        return Target(os.path.commonpath(paths), ", ".join(str(t) for t in targets))

    def admit(self, job: PytcJob, env: AdmitEnv) -> Any:
        """Every volume's job is admitted before any runs: a problem with the third volume is found
        before the first is predicted."""
        checked = []
        for document, one in zip(job.conversion.documents, job.jobs, strict=True):
            with pytc_names(document):
                admitted = self._inner(job).admit(one, env)
            source = getattr(admitted, "source", None)  # the inference kind's opened input
            if source is not None and str(source.dtype) != "uint8":
                raise SpecError(
                    "DATASET.NORMALIZE_RANGE",
                    f"the input {source.path} is {source.dtype}: PyTC divides inputs by 255 after "
                    "stretching non-uint8 volumes to their own min and max (DATASET.NORMALIZE_RANGE), a "
                    "whole-volume statistic this service does not compute; convert the volume to uint8 as "
                    "PyTC would, then run again",
                )
            checked.append(admitted)
        return checked[0] if len(checked) == 1 else tuple(checked)

    def run(self, job: PytcJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        """The volumes in turn, as PyTC predicts them. One that fails does not stop the others; the
        run then fails naming each that failed (a rerun resumes: finished volumes are skipped by
        their own runs). A cancel stops at once, what is done kept."""
        for note in job.conversion.notes:
            env.notice(f"PyTC config: {note}")
        if len(job.jobs) == 1:
            with pytc_names(job.conversion.document):
                result = self._inner(job).run(job.job, env, checked)
            return {**result, "converted_kind": job.kind}
        checks = checked if isinstance(checked, tuple) else (None,) * len(job.jobs)
        results: list[dict[str, Any]] = []
        failed: list[str] = []
        for index, (document, one, check) in enumerate(
            zip(job.conversion.documents, job.jobs, checks, strict=True)
        ):
            output = document["output"]
            where = f"{document['input']['path']} -> {output['path']} ({output['dataset']})"
            env.notice(f"PyTC volume {index + 1} of {len(job.jobs)}: {where}")
            try:
                with pytc_names(document):
                    results.append(self._inner(job).run(one, env, check))
            except (JobFailedError, SpecError) as err:
                failed.append(f"{where}: {err}")
                env.notice(f"PyTC volume {index + 1} of {len(job.jobs)} failed: {err}")
        if failed:
            raise JobFailedError(
                f"{len(failed)} of {len(job.jobs)} volumes failed (run again to resume): " + "; ".join(failed)
            )
        return {**results[0], "converted_kind": job.kind, "volumes": results}

    def discard(self, job: PytcJob, env: RunEnv | None) -> None:
        discard = getattr(self._inner(job), "discard", None)
        if callable(discard):
            for one in job.jobs:
                discard(one, env)

    def summary(self, result: Mapping[str, Any]) -> Summary:
        """The summary of the kind the configuration became (recorded in the result); with several
        volumes, one line per volume and the first volume's output as the path."""
        from service.kinds import job_kind

        inner = job_kind(str(result.get("converted_kind", "inference")))
        volumes = result.get("volumes")
        if not isinstance(volumes, list):
            return inner.summary(result)
        summaries = [inner.summary(one) for one in volumes]
        return Summary(tuple(line for s in summaries for line in s.lines), summaries[0].output)


# Our fields -> the PyTC keys they come from (the longest prefix wins)
_SOURCES = {
    "input": "DATASET.IMAGE_NAME",
    "input.path": "DATASET.INPUT_PATH + DATASET.IMAGE_NAME",
    "input.normalize": "DATASET.MEAN",
    "model": "MODEL.ARCHITECTURE",
    "model.checkpoint": "--checkpoint",
    "model.init": "MODEL.PRE_MODEL",
    "window.patch_size": "MODEL.INPUT_SIZE",
    "window.stride": "INFERENCE.STRIDE",
    "window.pad_size": "DATASET.PAD_SIZE",
    "window.batch_size": "INFERENCE.SAMPLES_PER_BATCH",
    "window.tta": "INFERENCE.AUG_NUM",
    "output": "INFERENCE.OUTPUT_PATH",
    "output.heads": "MODEL.TARGET_OPT",
    "output.activation": "INFERENCE.OUTPUT_ACT",
    "output.chunks": "INFERENCE.OUTPUT_PATH",
    "compute.block_shape": "MODEL.INPUT_SIZE",
    "data.image": "DATASET.IMAGE_NAME",
    "data.label": "DATASET.LABEL_NAME",
    "data.valid_mask": "DATASET.VALID_MASK_NAME",
    "data.volumes": "DATASET.IMAGE_NAME",
    "data.volumes.image": "DATASET.IMAGE_NAME",
    "data.volumes.label": "DATASET.LABEL_NAME",
    "data.volumes.valid_mask": "DATASET.VALID_MASK_NAME",
    "targets.label_erosion": "MODEL.LABEL_EROSION",
    "targets.label_dilation": "MODEL.LABEL_DILATION",
    "sampling.augment.ztranspose": "AUGMENTOR.FLIP.DO_ZTRANS",
    "targets": "MODEL.TARGET_OPT",
    "solver": "SOLVER",
    "solver.batch_size": "SOLVER.SAMPLES_PER_BATCH",
    "solver.iterations": "SOLVER.ITERATION_TOTAL",
    "sampling": "MODEL.INPUT_SIZE",
    "checkpoint.dir": "DATASET.OUTPUT_PATH",
    "checkpoint.resume_from": "--checkpoint",
}


def pytc_field(field: str, reason: str) -> str:
    """The PyTC key a field of the converted document comes from."""
    if field.startswith("model") and field not in ("model.checkpoint", "model.init"):
        for key, pytc in CONFIG_KEYS.items():
            if re.search(rf"'{key}'|\b{key}:|\b{key} ", reason):
                return pytc
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        prefix = re.sub(r"\[\d+\]", "", ".".join(parts[:end]))
        if prefix in _SOURCES:
            return _SOURCES[prefix]
    return field


class pytc_names:
    """Re-raise a SpecError about the converted document under the PyTC key it came from; others
    (an output that exists: 409) keep their type and field."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> None:
        if not isinstance(err, SpecError) or type(err) not in (SpecError, PathOutsideRootsError):
            return
        errors = [(pytc_field(f, r), f"({f}) {r}" if f else r) for f, r in err.errors]
        raise type(err)(errors[0][0], errors[0][1], errors=errors) from err


PYTC_CONFIG = PytcConfigKind()
