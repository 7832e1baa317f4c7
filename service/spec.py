"""Job documents at the edge: YAML/JSON -> pydantic models -> the frozen ``workers.inference.job`` dataclasses.

Pydantic checks shapes and closed choices (unknown fields are named, with a suggestion); the rules
that tie fields together, and the data-root confinement of every path, are checked while building
the dataclasses. Every problem becomes a :class:`~service.errors.SpecError` naming the dotted field.
Nothing here reads data or writes anything: paths are only resolved (symlinks followed).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from models.ref import ModelRef
from service.errors import PathOutsideRootsError
from volumes.box import Box
from workers.errors import SpecError
from workers.inference.job import (
    Activation,
    Blending,
    ComputeSpec,
    Device,
    InferenceJob,
    InputSpec,
    Normalize,
    OutputDtype,
    OutputFormat,
    OutputSpec,
    PadMode,
    Precision,
    Reduce,
    WindowSpec,
)
from workers.training.job import TrainingJob

# Called with ``model.name``; returns the registered model or raises SpecError / LookupError.
ModelResolver = Callable[[str], ModelRef]

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosTriple = Annotated[list[PosInt], Field(min_length=3, max_length=3)]
NonNegTriple = Annotated[list[NonNegInt], Field(min_length=3, max_length=3)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True, min_length=1)]
StrictBool = Annotated[bool, Field(strict=True)]

MODEL_FORMS = ("torchscript", "exported", "name", "architecture")
AXES = ("z", "y", "x")
DEFAULT_OVERLAP = 0.5
_M = TypeVar("_M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoiModel(_Section):
    offset: NonNegTriple
    shape: PosTriple


class NormalizeModel(_Section):
    mode: Literal["auto", "none"] = "auto"
    mean: Finite | None = None
    std: Annotated[Finite, Field(gt=0.0)] | None = None


def _normalize_mode_or_mapping(value: Any) -> Any:
    """``auto`` / ``none`` name a mode; a mapping gives mean/std (applied after ``auto``)."""
    if value is None:
        return {}
    return {"mode": value} if isinstance(value, str) else value


# The ``normalize`` field of an input (inference) or of the training data, shorthands included.
NormalizeField = Annotated[NormalizeModel, BeforeValidator(_normalize_mode_or_mapping)]


class InputModel(_Section):
    path: Text
    dataset: Text | None = None
    roi: RoiModel | None = None
    normalize: NormalizeField = NormalizeModel()


class ModelSection(_Section):
    torchscript: Text | None = None
    exported: Text | None = None
    name: Text | None = None
    architecture: Text | None = None
    config: dict[str, Any] | None = None
    checkpoint: Text | None = None


class TtaModel(_Section):
    variants: Literal[1, 4, 8, 16] = 1
    reduce: Reduce = "mean"

    @field_validator("variants", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 would otherwise pass
            raise ValueError(f"expected 1, 4, 8 or 16, got {value!r}")
        return value


class WindowModel(_Section):
    patch_size: PosTriple
    stride: PosTriple | None = None
    overlap: Annotated[list[Fraction], Field(min_length=3, max_length=3)] | None = None
    blending: Blending = "gaussian"
    pad_size: NonNegTriple = [0, 0, 0]
    pad_mode: PadMode = "reflect"
    batch_size: PosInt = 4
    tta: TtaModel | None = None

    @field_validator("overlap", mode="before")
    @classmethod
    def _one_overlap_for_all_axes(cls, value: Any) -> Any:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return [value] * 3 if is_number else value


OutputTarget = Literal["binary", "boundary", "affinity", "semantic", "none"]


class OutputModel(_Section):
    path: Text
    dataset: Text = "pred"
    format: OutputFormat = "zarr3"
    dtype: OutputDtype = "float32"
    heads: Annotated[list[PosInt], Field(min_length=1)] | None = None
    activation: Annotated[list[Activation], Field(min_length=1)] | None = None
    chunks: PosTriple = [32, 256, 256]
    overwrite: StrictBool = False
    targets: Annotated[list[OutputTarget], Field(min_length=1)] | None = None

    @field_validator("activation", "targets", mode="before")
    @classmethod
    def _bare_string_is_one_head(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ComputeModel(_Section):
    block_shape: PosTriple | None = None
    device: Device = "auto"
    precision: Precision = "float32"


class InferenceDocument(_Section):
    kind: Literal["inference"] = "inference"
    input: InputModel
    model: ModelSection
    window: WindowModel
    output: OutputModel
    compute: ComputeModel | None = None


# --- entry points ---------------------------------------------------------------------------------


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a job file (YAML, hence also JSON). Syntax errors name the file, line and column."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(source), "no such job file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(str(source), f"cannot read the job file: {err}") from err
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        raise SpecError(where, f"invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise SpecError(str(source), f"invalid YAML: {err}") from err
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else type(doc).__name__
        raise SpecError(str(source), f"expected a mapping of job fields (kind, input, ...), got {got}")
    return doc


def parse_job_document(
    doc: Mapping[str, Any],
    data_roots: Sequence[str | Path],
    *,
    resolve_model: ModelResolver | None = None,
) -> InferenceJob | TrainingJob:
    """Validate a job document and build the engine's job: an :class:`InferenceJob`, or a
    :class:`TrainingJob` for ``kind: training`` (see :mod:`service.training_spec`).

    Relative paths resolve against the first data root; every path must resolve, symlinks followed,
    inside one of ``data_roots``. ``resolve_model`` turns ``model.name`` into a reference (the
    service's registry); without it a named model is an error. A missing ``kind`` means inference.
    """
    if not isinstance(doc, Mapping):
        raise SpecError("", f"a job document is a mapping of fields, got {type(doc).__name__}")
    roots = _resolved_roots(data_roots)
    kind = doc.get("kind", "inference")
    if kind == "training":
        from service.training_spec import parse_training_document  # it builds on this module

        return parse_training_document(doc, roots)
    if kind != "inference":
        raise SpecError("kind", f"expected 'inference' or 'training', got {kind!r}")
    parsed = _validate(InferenceDocument, doc)
    document = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return build_inference_job(parsed, roots, document=document, resolve_model=resolve_model)


def parse_inference_document(
    doc: Mapping[str, Any],
    data_roots: Sequence[str | Path],
    *,
    resolve_model: ModelResolver | None = None,
) -> InferenceJob:
    """:func:`parse_job_document` for callers that run inference only: a training document is a
    :class:`SpecError` on ``kind``."""
    job = parse_job_document(doc, data_roots, resolve_model=resolve_model)
    if not isinstance(job, InferenceJob):
        raise SpecError("kind", "expected an inference job here, got kind: training")
    return job


def build_inference_job(
    parsed: InferenceDocument,
    roots: Sequence[Path],
    *,
    document: str = "{}",
    resolve_model: ModelResolver | None = None,
) -> InferenceJob:
    """The cross-field rules and path confinement, on an already validated document."""
    window = _window(parsed.window)
    output = _output(parsed.output, roots)
    compute = _compute(parsed.compute or ComputeModel(), output.chunks)
    job_input = _input(parsed.input, roots)
    _check_no_overlap(job_input, output)
    model = _model(parsed.model, roots, resolve_model)
    return InferenceJob(job_input, model, window, output, compute, document=document)


def resolve_path(raw: str, roots: Sequence[Path], field: str) -> Path:
    """``raw`` made absolute (relative to the first root), symlinks followed, and confined to ``roots``.

    ``roots`` must already be resolved. The check is per path component (``is_relative_to``), so
    ``/data2`` is not inside ``/data``.
    """
    if "\x00" in raw:
        raise PathOutsideRootsError(field, f"path {raw!r} contains a NUL byte")
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops
        raise SpecError(field, f"cannot resolve path {raw!r}: {err}") from err
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise PathOutsideRootsError(
            field, f"path {raw!r} resolves to {resolved}, outside the data roots ({shown})"
        )
    return resolved


# --- validation helpers ---------------------------------------------------------------------------


def _validate(model: type[_M], doc: Mapping[str, Any]) -> _M:
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        issues = [(_dotted(e["loc"]), _reason(e, model)) for e in err.errors(include_url=False)]
        raise SpecError(issues[0][0], issues[0][1], errors=issues) from None


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _reason(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(root, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.7)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
        return f"unknown field; {hint}" if known else "unknown field"
    if kind == "missing":
        return "required"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"expected {error.get('ctx', {}).get('expected')}, got {value!r}"
    if kind == "value_error" or isinstance(value, Mapping | list):
        return message
    return f"{message}, got {value!r}"


def _fields_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    current: type[BaseModel] | None = root
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        current = _model_in(info.annotation) if info is not None else None
    return sorted(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


# --- domain conversion ----------------------------------------------------------------------------


def _triple(values: Iterable[int]) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return (a, b, c)


def _resolved_roots(data_roots: Sequence[str | Path]) -> list[Path]:
    if not data_roots:
        raise ValueError("at least one data root is needed")
    return [Path(root).resolve(strict=False) for root in data_roots]


def _dataset_name(raw: str, field: str) -> str:
    """A dataset inside a container: ``/``-separated names, never ``..``; slashes normalised."""
    if "\x00" in raw:
        raise PathOutsideRootsError(field, f"dataset {raw!r} contains a NUL byte")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathOutsideRootsError(field, f"dataset {raw!r} may not contain '..'")
    if not parts:
        raise SpecError(field, f"dataset {raw!r} names no array")
    return "/".join(parts)


def _located(
    path_raw: str, dataset_raw: str | None, roots: Sequence[Path], where: str
) -> tuple[str, str | None]:
    path = resolve_path(path_raw, roots, f"{where}.path")
    if dataset_raw is None:
        return str(path), None
    dataset = _dataset_name(dataset_raw, f"{where}.dataset")
    # A dataset is a path below the container too: a symlinked group must not lead out of the roots.
    resolve_path(str(path / dataset), roots, f"{where}.dataset")
    return str(path), dataset


def _input(section: InputModel, roots: Sequence[Path]) -> InputSpec:
    path, dataset = _located(section.path, section.dataset, roots, "input")
    roi = Box(tuple(section.roi.offset), tuple(section.roi.shape)) if section.roi is not None else None
    norm = section.normalize
    return InputSpec(path, dataset, roi, Normalize(norm.mode, norm.mean, norm.std))


def _model(section: ModelSection, roots: Sequence[Path], resolve_model: ModelResolver | None) -> ModelRef:
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
            config=_frozen_config(section.config or {}),
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
    try:
        return resolve_model(name)
    except LookupError:
        raise SpecError("model.name", f"no registered model named {name!r}") from None


def _frozen_config(config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable, ordered (key, value) pairs; lists become tuples. Values are checked by the model."""

    def freeze(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            raise SpecError(f"model.config.{key}", "nested mappings are not supported")
        if isinstance(value, list | tuple):
            return tuple(freeze(key, v) for v in value)
        return value

    return tuple((key, freeze(key, config[key])) for key in sorted(config))


def _window(section: WindowModel) -> WindowSpec:
    patch = _triple(section.patch_size)
    if section.stride is not None and section.overlap is not None:
        raise SpecError("window.overlap", "give window.stride or window.overlap, not both")
    if section.stride is not None:
        stride = _triple(section.stride)
        if any(s > p for s, p in zip(stride, patch, strict=True)):
            raise SpecError(
                "window.stride",
                f"stride {list(stride)} exceeds patch_size {list(patch)} on some axis; "
                "voxels between windows would get no prediction",
            )
    else:
        overlap = section.overlap or [DEFAULT_OVERLAP] * 3
        stride = _triple(stride_from_overlap(p, o) for p, o in zip(patch, overlap, strict=True))
    tta = section.tta or TtaModel()
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
        pad_size=_triple(section.pad_size),
        pad_mode=section.pad_mode,
        batch_size=section.batch_size,
        tta_variants=tta.variants,
        tta_reduce=tta.reduce,
    )


def stride_from_overlap(patch: int, overlap: float) -> int:
    """PyTC's rule: ``stride = int(patch * (1 - overlap))``, at least 1."""
    return max(1, int(patch * (1.0 - overlap)))


def _output(section: OutputModel, roots: Sequence[Path]) -> OutputSpec:
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
    path, dataset = _located(section.path, section.dataset, roots, "output")
    if any(root.is_relative_to(Path(path)) for root in roots):
        raise SpecError("output.path", f"{path} is a data root (or holds one); name a container inside it")
    return OutputSpec(
        path=path,
        dataset=str(dataset),
        format=section.format,
        dtype=section.dtype,
        heads=heads,
        activations=activations,
        chunks=_triple(section.chunks),
        overwrite=section.overwrite,
        targets=targets,
    )


def _compute(section: ComputeModel, chunks: tuple[int, int, int]) -> ComputeSpec:
    block = _triple(section.block_shape) if section.block_shape is not None else None
    if block is not None:
        for axis, b, c in zip(AXES, block, chunks, strict=True):
            if b % c:
                raise SpecError(
                    "compute.block_shape",
                    f"{list(block)} is not a multiple of output.chunks {list(chunks)} "
                    f"(axis {axis}: {b} % {c} != 0)",
                )
    return ComputeSpec(block_shape=block, device=section.device, precision=section.precision)


def _check_no_overlap(job_input: InputSpec, output: OutputSpec) -> None:
    """The output array must be neither the input array nor inside or around it (overwrite would eat it)."""
    source = Path(job_input.path) / (job_input.dataset or "")
    target = Path(output.path) / output.dataset
    if source.is_relative_to(target) or target.is_relative_to(source):
        raise SpecError(
            "output.dataset",
            f"the output {target} overlaps the input {source}; write to another dataset or container",
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int | float | bool | None):
                continue  # unhashable or odd keys are left to the schema to refuse
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
