"""The training job as the engine sees it: frozen, typed, already validated at the edge.

``service.documents.training`` parses the contract's ``kind: training`` document into these; a Dask
task carries them (small and picklable). No torch here: the control plane imports this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from models.training_config import HeadSpec, OptimizerSpec, ScheduleSpec
from volumes.augment import AugmentSpec
from volumes.box import Box
from workers.inference.job import Device, Normalize, Precision

# Bumped when a change of the engine would make an old run's checkpoints continue differently.
TRAINING_KEY_VERSION = 1


@dataclass(frozen=True)
class VolumeRef:
    path: str  # absolute, resolved inside the data roots
    dataset: str | None = None


@dataclass(frozen=True)
class TrainingVolume:
    """One (image, label[, valid mask]) volume of several (``data.volumes``)."""

    image: VolumeRef
    label: VolumeRef
    valid_mask: VolumeRef | None = None
    roi: Box | None = None


@dataclass(frozen=True)
class TrainingData:
    """The first volume's fields, then any further volumes (``more``), sampled as PyTC samples
    several (volumes.sampling)."""

    image: VolumeRef
    label: VolumeRef
    valid_mask: VolumeRef | None = None
    roi: Box | None = None  # spatial (z, y, x); None = the whole volume
    normalize: Normalize = field(default_factory=Normalize)
    more: tuple[TrainingVolume, ...] = ()

    @property
    def volumes(self) -> tuple[TrainingVolume, ...]:
        return (TrainingVolume(self.image, self.label, self.valid_mask, self.roi), *self.more)

    def where(self, index: int) -> str:
        """The document's name of volume ``index``: ``data`` alone, ``data.volumes[i]`` of several."""
        return f"data.volumes[{index}]" if self.more else "data"


@dataclass(frozen=True)
class ValidationSpec:
    """A held-out volume scored every ``every`` iterations (and at the end): Dice and IoU of each
    head's activation thresholded at ``threshold`` against its target, over the ROI."""

    image: VolumeRef
    label: VolumeRef
    every: int
    roi: Box | None = None
    threshold: float = 0.5


@dataclass(frozen=True)
class TrainingModelSpec:
    architecture: str
    config: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs, lists as tuples: hashable
    init: str | None = None  # checkpoint whose weights start the run (fine-tuning)

    def config_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config}


@dataclass(frozen=True)
class SolverSpec:
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    iterations: int
    batch_size: int = 2
    save_every: int | None = None  # None: only at the end (and when cancelled)
    seed: int = 0
    clip_grad_norm: float | None = None


@dataclass(frozen=True)
class SamplingSpec:
    patch_size: tuple[int, int, int]
    valid_ratio: float = 0.5
    min_foreground: int = 1  # voxels; 0 turns rejection sampling off
    reject_probability: float = 0.95
    max_tries: int = 50
    budget: int = 1000  # draws in a row without foreground before the run fails
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    prefetch_threads: int = 2
    prefetch_depth: int = 4
    chunk_cache_bytes: int = 1 << 30  # decoded chunks kept for the crops (volumes.chunk_cache); 0: off


@dataclass(frozen=True)
class CheckpointSpec:
    dir: str  # absolute, resolved inside the data roots
    resume_from: str | None = None
    restart: bool = False
    keep_last: int = 3  # older checkpoints of this job are pruned; the final one is always kept


@dataclass(frozen=True)
class TrainingCompute:
    device: Device = "auto"
    precision: Precision = "float32"
    threads: int | None = None  # torch intra-op threads; None: the worker's setting


@dataclass(frozen=True)
class TrainingJob:
    data: TrainingData
    model: TrainingModelSpec
    heads: tuple[HeadSpec, ...]
    solver: SolverSpec
    sampling: SamplingSpec
    checkpoint: CheckpointSpec
    validation: ValidationSpec | None = None
    compute: TrainingCompute = field(default_factory=TrainingCompute)
    register_as: str | None = None
    document: str = "{}"  # the submitted document as canonical JSON
    # The data roots (resolved) its paths were confined to at admission; the task confines the data
    # it opens and the checkpoints and records it writes again (workers.confine). () = not confined.
    data_roots: tuple[str, ...] = ()
    kind: Literal["training"] = "training"

    def job_key(self) -> str:
        """Hash of everything that decides the run's weights.

        A checkpoint records it; a run (or a retry of it) resumes only from checkpoints with its own
        key, never from another job's that happens to share the folder. What only changes where or
        how often things are written or measured (``save_every``, ``keep_last``, ``register_as``,
        prefetching, validation, the device) is left out, so changing it keeps the run resumable.
        """
        payload = {
            "version": TRAINING_KEY_VERSION,
            "data": _data_key(self.data),
            "model": asdict(self.model),
            "heads": [_without_defaults(asdict(h), HEAD_KEY_DEFAULTS) for h in self.heads],
            "solver": _solver_key(self.solver),
            "sampling": _sampling_key(self.sampling),
            "checkpoint": {"resume_from": self.checkpoint.resume_from, "restart": self.checkpoint.restart},
            "precision": self.compute.precision,
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def out_channels(self) -> int:
        return sum(h.channels for h in self.heads)


@dataclass(frozen=True)
class ValidationScore:
    iteration: int
    dice: float
    iou: float
    per_head: tuple[tuple[str, float, float], ...] = ()  # (head kind, dice, iou)


@dataclass(frozen=True)
class TrainingOutcome:
    """What the training task returns: small, picklable, no torch.

    ``status`` is ``failed`` only for errors that a retry cannot fix (bad data, a checkpoint that
    does not fit, a diverged loss); they come back as a result so Dask does not retry them. Anything
    else is raised, and Dask retries the task, which resumes from the newest checkpoint.
    """

    status: Literal["finished", "cancelled", "failed"]
    iteration: int = 0
    iterations: int = 0
    checkpoint: str | None = None  # the final checkpoint, or the one saved on cancel
    sha256: str | None = None
    start_iteration: int = 0  # where this attempt began
    resumed_from: str | None = None  # the checkpoint this attempt continued from
    loss: float | None = None
    lr: float | None = None
    iterations_per_second: float = 0.0
    loader_wait_fraction: float = 0.0
    seconds: float = 0.0
    validation: tuple[ValidationScore, ...] = ()
    error: str | None = None
    error_field: str | None = None  # the job field the error is about, when one is


@dataclass(frozen=True)
class TrainingModelInfo:
    """What the pre-flight check on a worker learnt: the model builds, its channels fit the data and
    the targets, and the starting weights (if any) load into it."""

    in_channels: int
    out_channels: int
    parameters: int


def _solver_key(solver: SolverSpec) -> dict[str, Any]:
    """The solver's part of the job key; ``param_groups: one`` (the default, older than the field)
    is left out so that runs from before it keep their keys."""
    payload = {k: v for k, v in asdict(solver).items() if k != "save_every"}
    if payload["optimizer"]["param_groups"] == "one":
        del payload["optimizer"]["param_groups"]
    return payload


# Fields added after runs were keyed: left out of the key at their defaults, so those runs keep
# their keys (and resume from their checkpoints).
HEAD_KEY_DEFAULTS: dict[str, Any] = {"label_erosion": 0, "label_dilation": 0}
AUGMENT_KEY_DEFAULTS: dict[str, Any] = {"ztranspose": False}


def _without_defaults(payload: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if not (k in defaults and v == defaults[k])}


def _data_key(data: TrainingData) -> dict[str, Any]:
    payload = asdict(data)
    if not data.more:
        del payload["more"]
    return payload


def _sampling_key(sampling: SamplingSpec) -> dict[str, Any]:
    payload = {
        k: v
        for k, v in asdict(sampling).items()
        if k not in ("prefetch_threads", "prefetch_depth", "chunk_cache_bytes")
    }
    payload["augment"] = _without_defaults(payload["augment"], AUGMENT_KEY_DEFAULTS)
    return payload
