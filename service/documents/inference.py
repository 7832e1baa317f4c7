"""The inference document: YAML/JSON -> :class:`InferenceDocument` -> the frozen
``workers.inference.job`` dataclasses.

Pydantic checks shapes and closed choices (:func:`~service.documents.sections.validate`); the rules
that tie fields together (stride against patch, activations against heads, blocks against chunks,
the output against the input) and the data-root confinement of every path are checked while
building the :class:`~workers.inference.job.InferenceJob`. Every problem is a
:class:`~workers.errors.SpecError` naming the dotted field. Nothing here reads data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from models.ref import ModelRef
from models.sizes import architecture_parameters
from service.documents.loading import canonical_json
from service.documents.sections import (
    MAX_NAME_BYTES,
    Fraction,
    NonNegTriple,
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
from volumes.urls import is_url, url_under
from workers.errors import SpecError
from workers.inference.job import (
    Activation,
    Blending,
    ComputeSpec,
    Device,
    InferenceJob,
    InputSpec,
    MaskSpec,
    MemoryFormat,
    OutputDtype,
    OutputFormat,
    OutputSpec,
    PadMode,
    Precision,
    RawHeads,
    Reduce,
    Uint8Rounding,
    WindowSpec,
)
from workers.limits import (
    DEFAULT_LIMITS,
    Limits,
    check_chunk_bytes,
    check_model_parameters,
    check_pad,
    check_task_memory,
    task_memory,
)
from workers.storage import SCRATCH_ENV, scratch_dir

# Called with ``model.name``; returns the registered model or raises SpecError / LookupError.
ModelResolver = Callable[[str], ModelRef]

MODEL_FORMS = ("torchscript", "exported", "name", "architecture")
AXES = ("z", "y", "x")
DEFAULT_OVERLAP = 0.5
OutputTarget = Literal["binary", "boundary", "affinity", "semantic", "none"]
FractionTriple = Annotated[list[Fraction], Field(min_length=3, max_length=3)]
Activations = Annotated[list[Activation], Field(min_length=1)]
OutputTargets = Annotated[list[OutputTarget], Field(min_length=1)]


class MaskSection(Section):
    """A mask over the input: a bool or integer array, at the input's scale or coarser by a whole
    factor per axis (from the voxel sizes); windows over no nonzero voxel are not computed."""

    path: Text
    dataset: Text | None = None


class InputSection(Section):
    """The volume to predict: a container (zarr, N5, HDF5, a TIFF or PNG stack, a tile set) and its array."""

    path: Text
    dataset: Text | None = None
    roi: RoiSection | None = None
    normalize: NormalizeField = NormalizeSection()
    mask: MaskSection | None = None


class ModelSection(Section):
    """The network: exactly one of `torchscript`, `exported`, `name` (a registered model) or
    `architecture` (with its `config` and, optionally, a `checkpoint`)."""

    torchscript: Text | None = None
    exported: Text | None = None
    name: Text | None = None
    architecture: Text | None = None
    config: dict[str, Any] | None = None
    checkpoint: Text | None = None


class TtaSection(Section):
    """Test-time augmentation: how many flipped (4) or also transposed (8, 16) variants, and how
    their predictions are combined."""

    variants: Literal[1, 4, 8, 16] = 1
    reduce: Reduce = "mean"

    @field_validator("variants", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 would otherwise pass
            raise ValueError(f"expected 1, 4, 8 or 16, got {value!r}")
        return value


BLENDING_HELP = (
    "gaussian (the default: PyTC v1's blend_gaussian, sigma 0.2 on a linspace(-1, 1, n) grid per "
    "axis plus 1e-4), monai_gaussian (MONAI's importance map, sigma 0.125 * n voxels, floor 1e-3), "
    "bump (PyTC's) or constant"
)
RAW_HEADS_HELP = (
    "keep (the default) or pytc: as PyTC v1's Trainer.test, each window's prediction is clipped at 0 "
    "before blending and a TTA minimum starts from 1, a maximum from 0; this changes the values of "
    "heads without activation only. Configs imported from PyTC set it."
)
UINT8_ROUNDING_HELP = (
    "How dtype uint8 turns clip(x, 0, 1) * 255 into a level: truncate (the default, as PyTC's "
    "astype(uint8), which PyTC's decoder thresholds > int(255 * t) were tuned on) or round (to the nearest)"
)


class WindowSection(Section):
    """The sliding window: patch size, step (`stride`, or `overlap` as one fraction or one per
    axis), how overlapping patches are blended, padding, batch size and test-time augmentation."""

    patch_size: PosTriple
    stride: PosTriple | None = None
    overlap: FractionTriple | None = None
    blending: Blending = Field(default="gaussian", description=BLENDING_HELP)
    pad_size: NonNegTriple = [0, 0, 0]
    pad_mode: PadMode = "reflect"
    batch_size: PosInt = 4
    tta: TtaSection | None = None
    raw_heads: RawHeads = Field(default="keep", description=RAW_HEADS_HELP)

    @field_validator("overlap", mode="before", json_schema_input_type=Fraction | FractionTriple | None)
    @classmethod
    def _one_overlap_for_all_axes(cls, value: Any) -> Any:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return [value] * 3 if is_number else value


class OutputSection(Section):
    """Where the prediction goes and how it is stored; `heads` split its channels, each head with
    its `activation` (a single name for a single head)."""

    path: Text
    dataset: Text = "pred"
    format: OutputFormat = "zarr3"
    dtype: OutputDtype = "float32"
    heads: Annotated[list[PosInt], Field(min_length=1)] | None = None
    activation: Activations | None = None
    chunks: PosTriple = [32, 256, 256]
    overwrite: StrictBool = False
    targets: OutputTargets | None = None
    # the image's coarser levels (OME-Zarr multiscales), written after level 0; false: level 0 alone
    pyramid: StrictBool = True
    shards: PosTriple | None = Field(
        default=None,
        description="zarr3 or precomputed: chunks grouped into shards of this shape (z, y, x; each a "
        "multiple of `chunks`), one object per shard; `compute.block_shape` must then be a multiple of it",
    )
    uint8_rounding: Uint8Rounding = Field(default="truncate", description=UINT8_ROUNDING_HELP)

    @field_validator("activation", mode="before", json_schema_input_type=Activation | Activations | None)
    @classmethod
    def _one_activation_is_one_head(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("targets", mode="before", json_schema_input_type=OutputTarget | OutputTargets | None)
    @classmethod
    def _one_target_is_one_head(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


PRECISION_HELP = (
    "float32 (the default), bfloat16 or float16: the network runs under autocast in this type; "
    "blending and accumulation stay float32. A reduced precision is refused (naming the device) "
    "where the device does not run it natively: on a CPU bfloat16 needs AVX512-BF16 or AMX and "
    "float16 AVX512-FP16 or AMX-FP16; on a GPU bfloat16 needs compute capability 8.0 (Ampere)."
)


MEMORY_FORMAT_HELP = (
    "auto (the default) or contiguous: how the network's tensors are laid out in memory on a "
    "CPU. auto runs eager models with 3D convolutions channels-last, which is faster and rounds "
    "differently (by about 1e-5); contiguous is PyTorch's and PyTC's layout, which a converted "
    "PyTC config asks for so that its uint8 output is PyTC's bit for bit. GPUs run contiguous "
    "either way."
)


class ComputeSection(Section):
    """How the work is cut and run: the output box per task, the device, the precision and the
    memory layout."""

    block_shape: PosTriple | None = None
    device: Device = "auto"
    precision: Precision = Field(default="float32", description=PRECISION_HELP)
    memory_format: MemoryFormat = Field(default="auto", description=MEMORY_FORMAT_HELP)


class InferenceDocument(Section):
    """An inference job: predict a volume with a model, window by window, into a chunked array.
    `kind` may be left out."""

    kind: Literal["inference"] = "inference"
    input: InputSection
    model: ModelSection
    window: WindowSection
    output: OutputSection
    compute: ComputeSection | None = None


def parse_inference(
    doc: object,
    data_roots: Sequence[str | Path],
    *,
    resolve_model: ModelResolver | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> InferenceJob:
    """Validate an inference document (``kind: inference`` or no ``kind``) and build the job.

    Relative paths resolve against the first data root; every path must resolve, symlinks followed,
    inside one of ``data_roots``. ``resolve_model`` turns ``model.name`` into a reference (the
    service's registry); without it a named model is an error. Sizes are bounded by ``limits``
    (:mod:`workers.limits`) with one channel in and out: what no model could run is refused here.
    """
    roots = resolved_roots(data_roots)
    document = require_kind(doc, "inference")
    parsed = validate(InferenceDocument, document)
    window = _window(parsed.window)
    output = _output(parsed.output, roots)
    compute = _compute(parsed.compute or ComputeSection(), output.write_unit, output.shards is not None)
    job_input = _input(parsed.input, roots)
    _check_no_overlap(job_input, output)
    _check_sizes(window, output, compute, limits)
    model = _model(parsed.model, roots, resolve_model)
    if model.kind == "architecture":
        parameters = architecture_parameters(model.architecture, model.config_dict())
        check_model_parameters(parameters, limits, "model.name" if model.name else "model.config")
    return InferenceJob(
        job_input,
        model,
        window,
        output,
        compute,
        document=canonical_json(document),
        data_roots=tuple(str(root) for root in roots),
    )


def _check_sizes(window: WindowSpec, output: OutputSpec, compute: ComputeSpec, limits: Limits) -> None:
    """Bounds from the document alone, before anything is allocated: the pad, the chunks, and a
    block task's memory with its smallest block (the chunks) when the planner will choose it."""
    check_pad(window.pad_size, window.patch_size)
    check_chunk_bytes(output.write_unit, limits)
    block = compute.block_shape or output.write_unit
    memory = task_memory(window.patch_size, block, window.batch_size)
    check_task_memory(
        memory, limits, block_field="compute.block_shape" if compute.block_shape else "output.chunks"
    )


def stride_from_overlap(patch: int, overlap: float) -> int:
    """PyTC's rule: ``stride = int(patch * (1 - overlap))``, at least 1."""
    return max(1, int(patch * (1.0 - overlap)))


def _input(section: InputSection, roots: Sequence[Root]) -> InputSpec:
    path, dataset = located(section.path, section.dataset, roots, "input")
    mask = None
    if section.mask is not None:
        mask = MaskSpec(*located(section.mask.path, section.mask.dataset, roots, "input.mask"))
    return InputSpec(path, dataset, box_of(section.roi), normalize_of(section.normalize), mask)


def _model(section: ModelSection, roots: Sequence[Root], resolve_model: ModelResolver | None) -> ModelRef:
    forms = [form for form in MODEL_FORMS if getattr(section, form) is not None]
    if len(forms) != 1:
        got = "none" if not forms else " and ".join(forms)
        raise SpecError("model", f"name exactly one of {', '.join(MODEL_FORMS)}; got {got}")
    form = forms[0]
    for extra in ("config", "checkpoint"):
        if form != "architecture" and getattr(section, extra) is not None:
            raise SpecError(f"model.{extra}", f"goes only with model.architecture, not model.{form}")
    if form == "name":
        return _named_model(str(section.name), resolve_model)
    if form == "architecture":
        checkpoint = section.checkpoint
        return ModelRef(
            "architecture",
            architecture=section.architecture,
            config=frozen_config(section.config or {}),
            checkpoint=str(resolve_path(checkpoint, roots, "model.checkpoint")) if checkpoint else None,
        )
    raw = str(getattr(section, form))
    return ModelRef(
        "torchscript" if form == "torchscript" else "exported",
        path=str(resolve_path(raw, roots, f"model.{form}")),
    )


def _named_model(name: str, resolve_model: ModelResolver | None) -> ModelRef:
    if resolve_model is None:
        raise SpecError("model.name", "no model registry in this mode; name a model file or an architecture")
    if len(name) > MAX_NAME_BYTES:
        raise SpecError("model.name", f"a model name is at most {MAX_NAME_BYTES} characters, got {len(name)}")
    try:
        return resolve_model(name)
    except LookupError:
        raise SpecError("model.name", f"no registered model named {name!r}") from None


def _window(section: WindowSection) -> WindowSpec:
    patch = triple(section.patch_size)
    if section.stride is not None and section.overlap is not None:
        raise SpecError("window.overlap", "give window.stride or window.overlap, not both")
    if section.stride is not None:
        stride = triple(section.stride)
        if any(s > p for s, p in zip(stride, patch, strict=True)):
            raise SpecError(
                "window.stride",
                f"stride {list(stride)} exceeds patch_size {list(patch)} on some axis; "
                "voxels between windows would get no prediction",
            )
    else:
        overlap = section.overlap or [DEFAULT_OVERLAP] * 3
        stride = triple(stride_from_overlap(p, o) for p, o in zip(patch, overlap, strict=True))
    tta = section.tta or TtaSection()
    if tta.variants in (8, 16) and patch[1] != patch[2]:
        raise SpecError(
            "window.tta.variants",
            f"transpose TTA needs a square yx patch, got patch_size {list(patch)} "
            f"with {tta.variants} variants (use 1 or 4, or make y == x)",
        )
    return WindowSpec(
        patch_size=patch,
        stride=stride,
        blending=section.blending,
        pad_size=triple(section.pad_size),
        pad_mode=section.pad_mode,
        batch_size=section.batch_size,
        tta_variants=tta.variants,
        tta_reduce=tta.reduce,
        raw_heads=section.raw_heads,
    )


def _output(section: OutputSection, roots: Sequence[Root]) -> OutputSpec:
    heads = tuple(section.heads or ())
    default: list[Activation] = ["none"] * max(1, len(heads))
    activations = tuple(section.activation or default)
    n_heads = max(1, len(heads))
    if len(activations) != n_heads:
        raise SpecError(
            "output.activation",
            f"{len(activations)} activation(s) {list(activations)} for {n_heads} head(s) "
            f"{list(heads) or '(one head with all channels)'}; give one activation per head",
        )
    targets = tuple(section.targets or ())
    if targets and len(targets) != n_heads:
        raise SpecError(
            "output.targets",
            f"{len(targets)} target(s) {list(targets)} for {n_heads} head(s); give one per head",
        )
    if section.format == "precomputed" and section.dtype == "float16":
        raise SpecError("output.dtype", "precomputed stores float32 or uint8, not float16")
    path, dataset = located(section.path, section.dataset, roots, "output")
    if is_url(path):
        _check_remote_output(path, section.format, roots)
    elif any(isinstance(root, Path) and root.is_relative_to(Path(path)) for root in roots):
        raise SpecError("output.path", f"{path} is a data root (or holds one); name a container inside it")
    return OutputSpec(
        path=path,
        dataset=str(dataset),
        format=section.format,
        dtype=section.dtype,
        heads=heads,
        activations=activations,
        chunks=triple(section.chunks),
        overwrite=section.overwrite,
        targets=targets,
        pyramid=section.pyramid,
        shards=_shards(section),
        uint8_rounding=section.uint8_rounding,
    )


def _compute(section: ComputeSection, chunks: tuple[int, int, int], sharded: bool = False) -> ComputeSpec:
    """``chunks``: what one block must write whole (the output's shards when ``sharded``)."""
    block = triple(section.block_shape) if section.block_shape is not None else None
    if block is not None:
        unit = "output.shards" if sharded else "output.chunks"
        for axis, b, c in zip(AXES, block, chunks, strict=True):
            if b % c:
                raise SpecError(
                    "compute.block_shape",
                    f"{list(block)} is not a multiple of {unit} {list(chunks)} (axis {axis}: {b} % {c} != 0)",
                )
    return ComputeSpec(
        block_shape=block,
        device=section.device,
        precision=section.precision,
        memory_format=section.memory_format,
    )


def _shards(section: OutputSection) -> tuple[int, int, int] | None:
    """``output.shards``: zarr v3 or precomputed only, each a whole number of chunks (a precomputed
    shard is also a box of its chunk grid: :func:`workers.inference.checks.check_precomputed_output`)."""
    if section.shards is None:
        return None
    shards, chunks = triple(section.shards), triple(section.chunks)
    if section.format not in ("zarr3", "precomputed"):
        raise SpecError(
            "output.shards", f"shards are a zarr v3 or precomputed feature; output.format is {section.format}"
        )
    for axis, s, c in zip(AXES, shards, chunks, strict=True):
        if s % c:
            raise SpecError(
                "output.shards",
                f"{list(shards)} is not a multiple of output.chunks {list(chunks)} (axis {axis})",
            )
    return shards


def _check_remote_output(url: str, format: str, roots: Sequence[Root]) -> None:
    """An output in an object store: not a root itself, and a run folder on a file system inside a
    local data root (``PYTC_SCRATCH_DIR``, :mod:`workers.storage`)."""
    if format not in ("zarr3", "zarr2", "n5"):
        raise SpecError("output.format", f"an output in an object store is zarr3, zarr2 or n5, not {format}")
    if any(isinstance(root, str) and url_under(root, url) for root in roots):
        raise SpecError("output.path", f"{url} is a data root (or holds one); name a container inside it")
    scratch = scratch_dir()
    if not any(isinstance(root, Path) and scratch.is_relative_to(root) for root in roots):
        raise SpecError(
            "output.path",
            f"an output in an object store keeps its run folder in {SCRATCH_ENV} ({scratch}), which is "
            "outside the local data roots; name a folder inside one",
        )


def _check_no_overlap(job_input: InputSpec, output: OutputSpec) -> None:
    """The output array must be neither the input array nor inside or around it (overwrite would eat
    it). Both are compared as they resolve, every symlink on the way followed: an output dataset
    whose group is a link into the input's container is the input."""
    source = _resolved(Path(job_input.path) / (job_input.dataset or ""))
    target = _resolved(Path(output.path) / output.dataset)
    if source.is_relative_to(target) or target.is_relative_to(source):
        raise SpecError(
            "output.dataset",
            f"the output {Path(output.path) / output.dataset} (resolves to {target}) overlaps the input "
            f"{source}; write to another dataset or container",
        )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: resolve_path has refused it already
        return path
