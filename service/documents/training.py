"""The training document: YAML/JSON -> :class:`TrainingDocument` ->
:class:`workers.training.job.TrainingJob`.

Beyond the contract's fields (all kept), a document may say how to schedule the learning rate,
clip gradients, sample and augment, validate, and how many checkpoints to keep; every default
follows PyTC. Cross-field rules (targets vs the model's channels, schedules, where the run starts)
are checked while building the job, each failure a :class:`~workers.errors.SpecError` naming the
dotted field; paths are confined to the data roots as for inference. Nothing is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from models.sizes import architecture_parameters
from models.training_config import HeadSpec, LossWeights, OptimizerSpec, ScheduleSpec, default_loss
from service.documents.inference import PRECISION_HELP
from service.documents.loading import canonical_json
from service.documents.sections import (
    Finite,
    NonNegInt,
    NormalizeField,
    NormalizeSection,
    PosInt,
    PosTriple,
    RoiSection,
    Root,
    Section,
    StrictBool,
    Text,
    box_of,
    frozen_config,
    located,
    normalize_of,
    require_kind,
    resolve_path,
    resolved_roots,
    triple,
    validate,
)
from volumes.augment import AugmentSpec
from workers.errors import SpecError
from workers.inference.job import Device, Precision
from workers.limits import DEFAULT_LIMITS, Limits, check_model_parameters, check_training_memory
from workers.training.job import (
    CheckpointSpec,
    SamplingSpec,
    SolverSpec,
    TrainingCompute,
    TrainingData,
    TrainingJob,
    TrainingModelSpec,
    TrainingVolume,
    ValidationSpec,
    VolumeRef,
)

Probability = Annotated[float, Field(strict=False, ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
TargetKind = Literal["binary", "boundary", "affinity", "semantic"]
ScheduleKind = Literal["constant", "step", "warmup_cosine", "pytc_warmup_cosine"]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class VolumeSection(Section):
    """An array: a container (zarr, N5, HDF5 or a tile set) and the dataset in it."""

    path: Text
    dataset: Text | None = None


class TrainingVolumeSection(Section):
    """One of several training volumes: an image, its label, optionally a valid mask and a region."""

    image: VolumeSection
    label: VolumeSection
    valid_mask: VolumeSection | None = None
    roi: RoiSection | None = None


class DataSection(Section):
    """What to learn from: the image, its label, optionally a mask of the voxels that count, a
    region, and how the image is normalized; or several such volumes (`volumes`, each drawn with a
    chance proportional to its number of patch positions, as PyTC draws them)."""

    image: VolumeSection | None = None
    label: VolumeSection | None = None
    valid_mask: VolumeSection | None = None
    roi: RoiSection | None = None
    volumes: Annotated[list[TrainingVolumeSection], Field(min_length=1, max_length=1024)] | None = None
    normalize: NormalizeField = NormalizeSection()


class ValidationSection(Section):
    """A held-out image and label, scored every `every` iterations at `threshold`."""

    image: VolumeSection
    label: VolumeSection
    roi: RoiSection | None = None
    every: PosInt
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5


class TrainingModelSection(Section):
    """The network to train: a built-in architecture, its config, and optionally weights to start
    from (`init`, to fine-tune)."""

    architecture: Text
    config: dict[str, Any] | None = None
    init: Text | None = None


class LossSection(Section):
    """Loss weights of a head; a weight left out takes the target's default."""

    bce: NonNegFloat | None = None
    dice: NonNegFloat | None = None
    ce: NonNegFloat | None = None


class TargetSection(Section):
    """What one output head learns (`semantic` with its number of `classes`), and its loss."""

    kind: TargetKind
    loss: LossSection | None = None
    classes: PosInt | None = None
    # PyTC's MODEL.LABEL_EROSION / LABEL_DILATION of this target: in-plane voxels
    label_erosion: Annotated[int, Field(strict=True, ge=0, le=64)] = 0
    label_dilation: Annotated[int, Field(strict=True, ge=0, le=64)] = 0


class ScheduleSection(Section):
    """The learning-rate schedule: `constant`, `step` (at `milestones` or every `step_size`), or
    `warmup_cosine` (warm-up, then a cosine to `min_lr_ratio`), or `pytc_warmup_cosine` (PyTC v1's
    WarmupCosineLR: the warm-up factor times a half cosine over all iterations)."""

    kind: ScheduleKind = "constant"
    milestones: Annotated[list[PosInt], Field(min_length=1)] | None = None
    step_size: PosInt | None = None
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    warmup: NonNegInt = 0
    warmup_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.001
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class SolverSection(Section):
    """The optimizer and its schedule (a schedule's name alone, or a mapping), how long to train,
    and how often to save."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: Annotated[Finite, Field(gt=0.0)] = 0.001
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: NonNegFloat = 1e-4
    # one: every parameter in one group; pytc: PyTC v1's groups (one per parameter, no weight decay
    # for biases and normalisation layers), so PyTC and this service load each other's checkpoints
    param_groups: Literal["one", "pytc"] = "one"
    schedule: ScheduleSection = ScheduleSection()
    clip_grad_norm: Annotated[float, Field(gt=0.0)] | None = None
    iterations: PosInt
    batch_size: PosInt = 2
    save_every: PosInt | None = None
    seed: NonNegInt = 0

    @field_validator("schedule", mode="before", json_schema_input_type=ScheduleKind | ScheduleSection)
    @classmethod
    def _kind_or_mapping(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class RejectSection(Section):
    """Rejection sampling: a patch with fewer than `min_foreground` label voxels is drawn again
    with this `probability`."""

    min_foreground: NonNegInt = 1
    probability: Probability = 0.95
    max_tries: PosInt = 50
    budget: PosInt = 1000


class AugmentSection(Section):
    """Augmentations of each training patch."""

    flip: StrictBool = True
    transpose: StrictBool = True
    rotate90: StrictBool = True
    intensity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    missing_section: Probability = 0.0
    elastic: Probability = 0.0
    elastic_alpha: Annotated[float, Field(gt=0.0, le=64.0)] = 6.0
    ztranspose: StrictBool = False  # swap z and x half the time (isotropic data; patch z == x)


class PrefetchSection(Section):
    """Background reading of training patches, and the memory kept for decoded chunks."""

    threads: Annotated[int, Field(strict=True, ge=1, le=32)] = 2
    depth: Annotated[int, Field(strict=True, ge=1, le=64)] = 4
    # decoded chunks of image, label and mask kept in memory for the crops (MiB, all together; 0: off)
    cache_mb: Annotated[int, Field(strict=True, ge=0, le=1 << 20)] = 1024


class SamplingSection(Section):
    """How training patches are drawn: their size, rejection of empty ones (`reject: false` turns
    it off) and augmentation (`augment: false` turns the geometric and intensity ones off)."""

    patch_size: PosTriple
    valid_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    reject: RejectSection | None = RejectSection()
    augment: AugmentSection = AugmentSection()
    prefetch: PrefetchSection = PrefetchSection()

    @field_validator("reject", mode="before", json_schema_input_type=Literal[False] | RejectSection | None)
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        return None if value is False else value

    @field_validator("augment", mode="before", json_schema_input_type=bool | AugmentSection | None)
    @classmethod
    def _switch_or_mapping(cls, value: Any) -> Any:
        if value is False:
            return {"flip": False, "transpose": False, "rotate90": False, "intensity": 0.0}
        return {} if value is True or value is None else value


class CheckpointSection(Section):
    """Where checkpoints go, which one to resume from (`restart: true`: its weights only), and how
    many to keep."""

    dir: Text
    resume_from: Text | None = None
    restart: StrictBool = False
    keep_last: PosInt = 3


class TrainingComputeSection(Section):
    """The device, the precision and the CPU threads of the training task."""

    device: Device = "auto"
    precision: Precision = Field(default="float32", description=PRECISION_HELP)
    threads: PosInt | None = None


Targets = Annotated[list[TargetSection], Field(min_length=1)]


class TrainingDocument(Section):
    """A training job: learn a network from an image and its label, checkpointing as it goes, and
    optionally register the result as a model that inference jobs name. `targets` lists one target
    per head, each a name (`binary`) or a mapping."""

    kind: Literal["training"]
    data: DataSection
    validation: ValidationSection | None = None
    model: TrainingModelSection
    targets: Targets
    solver: SolverSection
    sampling: SamplingSection
    checkpoint: CheckpointSection
    compute: TrainingComputeSection | None = None
    register_as: ModelName | None = None

    @field_validator(
        "targets",
        mode="before",
        json_schema_input_type=Annotated[list[TargetKind | TargetSection], Field(min_length=1)],
    )
    @classmethod
    def _names_or_mappings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"kind": v} if isinstance(v, str) else v for v in value]
        return value


def parse_training(
    doc: object, data_roots: Sequence[str | Path], *, limits: Limits = DEFAULT_LIMITS
) -> TrainingJob:
    """Validate a ``kind: training`` document and build the job; paths as for inference. The
    network's size (from its config) and a batch's memory (one channel in, the heads' out) are
    bounded by ``limits`` (:mod:`workers.limits`)."""
    roots = resolved_roots(data_roots)
    document = require_kind(doc, "training")
    parsed = validate(TrainingDocument, document)
    heads = tuple(_head(t, i) for i, t in enumerate(parsed.targets))
    model = _model(parsed.model, roots)
    _check_out_channels(model, heads)
    check_model_parameters(architecture_parameters(model.architecture, model.config_dict()), limits)
    check_training_memory(triple(parsed.sampling.patch_size), parsed.solver.batch_size, 1, 1, limits)
    checkpoint = _checkpoint(parsed.checkpoint, roots)
    if model.init is not None and checkpoint.resume_from is not None:
        raise SpecError(
            "model.init", "give model.init (fine-tune) or checkpoint.resume_from (resume), not both"
        )
    compute = parsed.compute or TrainingComputeSection()
    return TrainingJob(
        data=_data(parsed.data, roots),
        model=model,
        heads=heads,
        solver=_solver(parsed.solver),
        sampling=_sampling(parsed.sampling),
        checkpoint=checkpoint,
        validation=_validation(parsed.validation, roots) if parsed.validation else None,
        compute=TrainingCompute(compute.device, compute.precision, compute.threads),
        register_as=parsed.register_as,
        document=canonical_json(document),
        data_roots=tuple(str(root) for root in roots),
    )


def _ref(section: VolumeSection, roots: Sequence[Root], where: str) -> VolumeRef:
    path, dataset = located(section.path, section.dataset, roots, where)
    return VolumeRef(path, dataset)


def _data(section: DataSection, roots: Sequence[Root]) -> TrainingData:
    if section.volumes is None:
        if section.image is None or section.label is None:
            missing = "image" if section.image is None else "label"
            raise SpecError(f"data.{missing}", "is required (or list several volumes as data.volumes)")
        one = TrainingVolumeSection(
            image=section.image, label=section.label, valid_mask=section.valid_mask, roi=section.roi
        )
        volumes = [_volume(one, roots, "data")]
    else:
        given = [n for n in ("image", "label", "valid_mask", "roi") if getattr(section, n) is not None]
        if given:
            raise SpecError(
                f"data.{given[0]}",
                "give data.volumes (several volumes, each with its image, label, valid_mask, roi) "
                "or data.image and data.label (one), not both",
            )
        volumes = [_volume(v, roots, f"data.volumes[{i}]") for i, v in enumerate(section.volumes)]
    first = volumes[0]
    return TrainingData(
        image=first.image,
        label=first.label,
        valid_mask=first.valid_mask,
        roi=first.roi,
        normalize=normalize_of(section.normalize),
        more=tuple(volumes[1:]),
    )


def _volume(section: TrainingVolumeSection, roots: Sequence[Root], where: str) -> TrainingVolume:
    return TrainingVolume(
        image=_ref(section.image, roots, f"{where}.image"),
        label=_ref(section.label, roots, f"{where}.label"),
        valid_mask=_ref(section.valid_mask, roots, f"{where}.valid_mask") if section.valid_mask else None,
        roi=box_of(section.roi),
    )


def _validation(section: ValidationSection, roots: Sequence[Root]) -> ValidationSpec:
    return ValidationSpec(
        image=_ref(section.image, roots, "validation.image"),
        label=_ref(section.label, roots, "validation.label"),
        every=section.every,
        roi=box_of(section.roi),
        threshold=section.threshold,
    )


def _model(section: TrainingModelSection, roots: Sequence[Root]) -> TrainingModelSpec:
    init = str(resolve_path(section.init, roots, "model.init")) if section.init else None
    return TrainingModelSpec(section.architecture, frozen_config(section.config or {}), init)


def _head(target: TargetSection, index: int) -> HeadSpec:
    where = f"targets[{index}]"
    if target.kind == "semantic" and (target.classes is None or target.classes < 2):
        raise SpecError(
            f"{where}.classes", "a semantic target needs classes: N (N >= 2 class ids in the label)"
        )
    if target.kind != "semantic" and target.classes is not None:
        raise SpecError(f"{where}.classes", f"only semantic targets have classes, not {target.kind}")
    base = default_loss(target.kind)
    given = target.loss or LossSection()
    loss = LossWeights(
        bce=base.bce if given.bce is None else given.bce,
        dice=base.dice if given.dice is None else given.dice,
        ce=base.ce if given.ce is None else given.ce,
    )
    if loss.ce and target.kind != "semantic":
        raise SpecError(f"{where}.loss.ce", "cross-entropy needs a semantic target; use bce")
    if not (loss.bce or loss.dice or loss.ce):
        raise SpecError(f"{where}.loss", "every loss weight is 0; this head would learn nothing")
    return HeadSpec(target.kind, loss, target.classes, target.label_erosion, target.label_dilation)


def _check_out_channels(model: TrainingModelSpec, heads: tuple[HeadSpec, ...]) -> None:
    config = model.config_dict()
    key = next((k for k in ("out_channels", "out_channel") if k in config), None)
    needed = sum(h.channels for h in heads)
    if key is not None and config[key] != needed:
        detail = " + ".join(f"{h.channels} ({h.kind})" for h in heads)
        raise SpecError(
            f"model.config.{key}",
            f"{config[key]!r} output channels, but the targets need {needed} = {detail}",
        )


def _solver(section: SolverSection) -> SolverSpec:
    optimizer = OptimizerSpec(
        section.optimizer,
        section.lr,
        section.weight_decay,
        section.momentum,
        param_groups=section.param_groups,
    )
    return SolverSpec(
        optimizer=optimizer,
        schedule=_schedule(section.schedule, section.iterations),
        iterations=section.iterations,
        batch_size=section.batch_size,
        save_every=section.save_every,
        seed=section.seed,
        clip_grad_norm=section.clip_grad_norm,
    )


def _schedule(section: ScheduleSection, iterations: int) -> ScheduleSpec:
    where = "solver.schedule"
    if section.kind == "step" and (section.milestones is None) == (section.step_size is None):
        raise SpecError(where, "a step schedule needs milestones: [...] or step_size: N (one of them)")
    if section.kind != "step" and (section.milestones is not None or section.step_size is not None):
        raise SpecError(where, f"milestones and step_size go with kind: step, not {section.kind}")
    if section.kind == "warmup_cosine" and section.warmup >= iterations:
        raise SpecError(f"{where}.warmup", f"{section.warmup} warmup iterations of {iterations} in all")
    if section.kind == "pytc_warmup_cosine" and section.min_lr_ratio:
        raise SpecError(f"{where}.min_lr_ratio", "goes with kind: warmup_cosine; PyTC's cosine ends at 0")
    return ScheduleSpec(
        kind=section.kind,
        milestones=tuple(sorted(section.milestones or ())),
        step_size=section.step_size,
        gamma=section.gamma,
        warmup=section.warmup,
        warmup_factor=section.warmup_factor,
        min_lr_ratio=section.min_lr_ratio,
    )


def _sampling(section: SamplingSection) -> SamplingSpec:
    reject = section.reject or RejectSection(min_foreground=0)
    aug = section.augment
    patch = triple(section.patch_size)
    if aug.ztranspose and patch[0] != patch[2]:
        raise SpecError(
            "sampling.augment.ztranspose",
            f"swaps z and x, so the patch needs as many sections as columns; patch_size is {list(patch)}",
        )
    return SamplingSpec(
        patch_size=triple(section.patch_size),
        valid_ratio=section.valid_ratio,
        min_foreground=reject.min_foreground,
        reject_probability=reject.probability,
        max_tries=reject.max_tries,
        budget=reject.budget,
        augment=AugmentSpec(
            flip=aug.flip,
            transpose=aug.transpose,
            rotate90=aug.rotate90,
            intensity=aug.intensity,
            missing_section=aug.missing_section,
            elastic=aug.elastic,
            elastic_alpha=aug.elastic_alpha,
            ztranspose=aug.ztranspose,
        ),
        prefetch_threads=section.prefetch.threads,
        prefetch_depth=section.prefetch.depth,
        chunk_cache_bytes=section.prefetch.cache_mb << 20,
    )


def _checkpoint(section: CheckpointSection, roots: Sequence[Root]) -> CheckpointSpec:
    folder = resolve_path(section.dir, roots, "checkpoint.dir")
    resume = (
        str(resolve_path(section.resume_from, roots, "checkpoint.resume_from"))
        if section.resume_from
        else None
    )
    if section.restart and resume is None:
        raise SpecError(
            "checkpoint.restart", "restart: true takes the weights of checkpoint.resume_from; name it"
        )
    return CheckpointSpec(str(folder), resume, section.restart, section.keep_last)
