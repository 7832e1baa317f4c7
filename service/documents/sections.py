"""What every job document is built from: the frozen :class:`Section`, the field types, validation
that names every problem by its dotted field, and the data-root confinement of paths.

A document is parsed in two steps. :func:`validate` checks shapes and closed choices with pydantic
and turns every failure into one :class:`~workers.errors.SpecError` (all problems kept, unknown
fields named with a suggestion). The document's own module then checks the rules that tie fields
together and confines its paths with :func:`resolve_path` / :func:`located` while it builds the
engine's frozen dataclasses. Nothing here reads data or writes anything: paths are only resolved.

The section models are also the published JSON Schema of the documents
(:mod:`service.documents.schema`), so each shorthand a section accepts is declared with the input
type it accepts (``json_schema_input_type``), and a section's docstring is written for users.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from service.errors import PathOutsideRootsError
from volumes.backends.png import has_pattern
from volumes.box import Box
from volumes.urls import is_url, normalise_url, url_under
from workers.errors import SpecError
from workers.inference.job import Normalize

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosTriple = Annotated[list[PosInt], Field(min_length=3, max_length=3)]
NonNegTriple = Annotated[list[NonNegInt], Field(min_length=3, max_length=3)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True, min_length=1)]
StrictBool = Annotated[bool, Field(strict=True)]

# What a file system takes (Linux's PATH_MAX and NAME_MAX): longer ones fail with ENAMETOOLONG
# wherever they are first used, so they are refused while parsing, naming the field.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

# A document without ``kind`` is an inference job, as it was before there were other kinds.
DEFAULT_KIND = "inference"
_M = TypeVar("_M", bound=BaseModel)


class Section(BaseModel):
    """Base of every part of a job document: immutable, and an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RoiSection(Section):
    """A box in voxels, (z, y, x): where it starts and how large it is."""

    offset: NonNegTriple
    shape: PosTriple


NormalizeMode = Literal["auto", "none"]


class NormalizeSection(Section):
    """How input intensities are scaled: `auto` (integers divided by their type's maximum, floats
    as they are) or `none`; `mean` and `std` then standardise, after `auto`."""

    mode: NormalizeMode = "auto"
    mean: Finite | None = None
    std: Annotated[Finite, Field(gt=0.0)] | None = None


def _normalize_mode_or_mapping(value: Any) -> Any:
    """``auto`` / ``none`` name a mode; a mapping gives mean/std (applied after ``auto``)."""
    if value is None:
        return {}
    return {"mode": value} if isinstance(value, str) else value


# The ``normalize`` field of an input (inference) or of the training data: a mode, a mapping or null.
NormalizeField = Annotated[
    NormalizeSection,
    BeforeValidator(
        _normalize_mode_or_mapping, json_schema_input_type=NormalizeMode | NormalizeSection | None
    ),
]


def normalize_of(section: NormalizeSection) -> Normalize:
    return Normalize(section.mode, section.mean, section.std)


# --- validation -----------------------------------------------------------------------------------


def as_document(doc: object) -> Mapping[str, Any]:
    """``doc`` when it is a mapping of fields; a SpecError otherwise (a JSON list, a bare string)."""
    if not isinstance(doc, Mapping):
        raise SpecError("", f"a job document is a mapping of fields, got {type(doc).__name__}")
    return doc


def kind_of(doc: object) -> object:
    """The document's ``kind``; absent, inference."""
    return as_document(doc).get("kind", DEFAULT_KIND)


def require_kind(doc: object, kind: str) -> Mapping[str, Any]:
    """``doc`` itself when it is a document of this ``kind``; otherwise a SpecError on ``kind``."""
    document = as_document(doc)
    got = document.get("kind", DEFAULT_KIND)
    if got != kind:
        shown = repr(got) if "kind" in document else f"no kind, which means {DEFAULT_KIND}"
        raise SpecError("kind", f"expected {kind!r} here, got {shown}")
    return document


def validate(model: type[_M], doc: Mapping[str, Any]) -> _M:
    """``doc`` as ``model``, or one SpecError holding every problem, each named by its dotted field
    (``window.tta.variants``, ``targets[0].kind``) and unknown fields with a suggestion."""
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
        close = closest_name(str(error["loc"][-1]), known)
        hint = f"did you mean {close!r}?" if close else f"expected one of: {', '.join(known)}"
        return f"unknown field; {hint}" if known else "unknown field"
    if kind == "missing":
        return "required"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"expected {error.get('ctx', {}).get('expected')}, got {value!r}"
    if kind == "value_error" or isinstance(value, Mapping | list):
        return message
    return f"{message}, got {value!r}"


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` is a typo of, or None: at most one slip (a letter missing, extra,
    wrong, or two letters swapped) per four letters of the longer name, and fewer slips than the
    shorter one has letters, case aside; the nearest wins.

    So ``formt`` is ``format`` and ``pach_size`` is ``patch_size``, while ``shards`` is not ``heads``
    (three slips in six letters): a name that merely shares letters with a field is not suggested.
    """
    typed = name.lower()
    best: tuple[int, str] | None = None
    for candidate in known:
        slips = _slips(typed, candidate.lower())
        longer, shorter = max(len(typed), len(candidate)), min(len(typed), len(candidate))
        if slips <= max(1, longer // 4) and slips < shorter and (best is None or slips < best[0]):
            best = (slips, candidate)
    return best[1] if best is not None else None


def _slips(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``, a swap of neighbours counting one (optimal string alignment)."""
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        above, before, row = before, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(before[j] + 1, row[j - 1] + 1, before[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], above[j - 2] + 1)
    return row[-1]


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


# --- paths ----------------------------------------------------------------------------------------


Root = Path | str  # a local folder, resolved, or a normalised object-store prefix (s3://bucket/key)


def split_roots(text: str) -> list[str]:
    """``PYTC_DATA_ROOTS``: ``:``-separated folders and ``s3://bucket/prefix`` URLs (whose own colon
    does not separate)."""
    roots: list[str] = []
    for part in text.split(":"):
        if part.startswith("//") and roots and roots[-1] == "s3":
            roots[-1] = f"s3:{part}"
        elif part:
            roots.append(part)
    return roots


def resolved_root(root: str | Path) -> Root:
    """A data root made absolute, symlinks followed; a URL normalised (ValueError for a bad one)."""
    return normalise_url(str(root)) if is_url(root) else Path(root).resolve(strict=False)


def resolved_roots(data_roots: Sequence[str | Path]) -> list[Root]:
    """The data roots made absolute, symlinks followed: what :func:`resolve_path` compares against."""
    if not data_roots:
        raise ValueError("at least one data root is needed")
    return [resolved_root(root) for root in data_roots]


def local_roots(roots: Sequence[Root]) -> list[Path]:
    """The local folders among ``roots`` (what serves files; object-store prefixes left out)."""
    return [root for root in roots if isinstance(root, Path)]


def resolve_url(raw: str, roots: Sequence[Root], field: str) -> str:
    """The object-store URL ``raw``, normalised, when it lies under one of the URL ``roots``."""
    check_path_length(raw, field)
    try:
        url = normalise_url(raw)
    except ValueError as err:
        raise PathOutsideRootsError(field, str(err)) from None
    if not any(isinstance(root, str) and url_under(url, root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise PathOutsideRootsError(field, f"{raw!r} is outside the data roots ({shown})")
    return url


def resolve_path(raw: str, roots: Sequence[Root], field: str) -> Path:
    """``raw`` made absolute (relative to the first root), symlinks followed, and confined to ``roots``.

    ``roots`` must already be resolved. The check is per path component (``is_relative_to``), so
    ``/data2`` is not inside ``/data``.
    """
    if "\x00" in raw:
        raise PathOutsideRootsError(field, f"path {raw!r} contains a NUL byte")
    check_path_length(raw, field)
    if is_url(raw):
        raise PathOutsideRootsError(field, f"{raw!r}: an object-store URL names volumes only, not this")
    candidate = Path(raw)
    if not candidate.is_absolute():
        local = [root for root in roots if isinstance(root, Path)]
        if not local:
            raise PathOutsideRootsError(
                field, f"relative path {raw!r} and no local data root to resolve it in"
            )
        candidate = local[0] / candidate
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops
        raise SpecError(field, f"cannot resolve path {raw!r}: {err}") from err
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise PathOutsideRootsError(
            field, f"path {raw!r} resolves to {resolved}, outside the data roots ({shown})"
        )
    check_path_length(str(resolved), field)
    if has_pattern(raw):  # a PNG stack's pattern: every file it matches is read, so each must be inside
        for match in sorted(glob.glob(str(resolved))):
            target = Path(match).resolve()
            if not any(target.is_relative_to(root) for root in roots):
                shown = ", ".join(str(r) for r in roots)
                raise PathOutsideRootsError(
                    field,
                    f"path {raw!r} matches {match}, which resolves to {target}, "
                    f"outside the data roots ({shown})",
                )
    return resolved


def check_path_length(path: str, field: str, what: str = "path") -> None:
    """At most :data:`MAX_PATH_BYTES` in all and :data:`MAX_NAME_BYTES` per component (UTF-8)."""
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise SpecError(field, f"the {what} is {size} bytes long ({_shown(path)}); at most {MAX_PATH_BYTES}")
    for part in path.split("/"):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise SpecError(
                field, f"a name in the {what} is {size} bytes long ({_shown(part)}); at most {MAX_NAME_BYTES}"
            )


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}...{text[-12:]!r}"


def dataset_name(raw: str, field: str) -> str:
    """A dataset inside a container: ``/``-separated names, never ``..``; slashes normalised."""
    if "\x00" in raw:
        raise PathOutsideRootsError(field, f"dataset {raw!r} contains a NUL byte")
    check_path_length(raw, field, "dataset")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathOutsideRootsError(field, f"dataset {raw!r} may not contain '..'")
    if not parts:
        raise SpecError(field, f"dataset {raw!r} names no array")
    return "/".join(parts)


def located(
    path_raw: str, dataset_raw: str | None, roots: Sequence[Root], where: str
) -> tuple[str, str | None]:
    """A container path (or object-store URL) and the dataset in it, both confined; errors name
    ``<where>.path`` or ``<where>.dataset``."""
    if is_url(path_raw):
        url = resolve_url(path_raw, roots, f"{where}.path")
        return url, None if dataset_raw is None else dataset_name(dataset_raw, f"{where}.dataset")
    path = resolve_path(path_raw, roots, f"{where}.path")
    if dataset_raw is None:
        return str(path), None
    dataset = dataset_name(dataset_raw, f"{where}.dataset")
    # A dataset is a path below the container too: a symlinked group must not lead out of the roots.
    resolve_path(str(path / dataset), roots, f"{where}.dataset")
    return str(path), dataset


# --- values ---------------------------------------------------------------------------------------


def triple(values: Iterable[int]) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return (a, b, c)


def box_of(roi: RoiSection | None) -> Box | None:
    return Box(tuple(roi.offset), tuple(roi.shape)) if roi is not None else None


def frozen_config(config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable, ordered (key, value) pairs; lists become tuples. Values are checked by the model."""

    def freeze(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            raise SpecError(f"model.config.{key}", "nested mappings are not supported")
        if isinstance(value, list | tuple):
            return tuple(freeze(key, v) for v in value)
        return value

    return tuple((key, freeze(key, config[key])) for key in sorted(config))
