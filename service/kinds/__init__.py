"""The registry of job kinds: the one place that maps a document's ``kind`` to the code that runs it.

A new kind of job is a module (or a small package) implementing :class:`~service.kinds.base.JobKind`,
plus its registration: one line in :data:`BUILTIN` for a kind this package ships, or, for a lab's
own kind, ``PYTC_JOB_KINDS=module:attribute[,...]`` in the environment of ``pytc-serve``, its
workers and ``pytc run`` (:func:`register_kinds`), or :func:`register_kind` from Python. ``pytc
run``, the job manager, the REST handlers, the OpenAPI document and the client find it here by name.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from service.documents.loading import check_bounds
from service.documents.sections import kind_of as kind_name
from service.errors import SpecError
from service.kinds.base import JobKind, ParseEnv, Summary, Target

__all__ = [
    "JobKind",
    "ParseEnv",
    "Summary",
    "Target",
    "documents",
    "job_kind",
    "job_kinds",
    "kind_of",
    "parse_job",
    "register_kind",
    "register_kinds",
    "unregister_kind",
]

# The kinds this package ships: module, then the attribute holding the kind.
BUILTIN = (
    ("service.kinds.inference", "INFERENCE"),
    ("service.kinds.training", "TRAINING"),
    ("service.kinds.segmentation", "SEGMENTATION"),
    ("service.kinds.evaluation", "EVALUATION"),
    ("service.kinds.pytc_config", "PYTC_CONFIG"),
)

_lock = threading.Lock()
_kinds: dict[str, JobKind[Any]] = {}


def register_kind(kind: JobKind[Any]) -> None:
    """Make ``kind`` known by its name (replacing a kind of the same name)."""
    with _lock:
        _kinds[kind.name] = kind


def register_kinds(specs: str | Sequence[str]) -> None:
    """Register the kinds named ``module:attribute`` (a comma-separated string, or a list)."""
    names = specs.split(",") if isinstance(specs, str) else list(specs)
    for spec in (s.strip() for s in names if s.strip()):
        module, _, attribute = spec.partition(":")
        try:
            kind = getattr(importlib.import_module(module), attribute or "KIND")
        except (ImportError, AttributeError) as err:
            raise ValueError(f"job kind {spec!r} cannot be loaded: {err}") from err
        for needed in ("name", "document", "parse", "target", "admit", "run", "summary"):
            if not hasattr(kind, needed):
                raise ValueError(f"job kind {spec!r} has no {needed!r}; see service.kinds.base.JobKind")
        register_kind(kind)


def unregister_kind(name: str) -> None:
    with _lock:
        _kinds.pop(name, None)


def job_kinds() -> list[JobKind[Any]]:
    """Every known kind, the built-in ones first."""
    _load_builtins()
    with _lock:
        return list(_kinds.values())


# Each built-in kind's name, so that a job of one kind imports only that kind's module (``pytc run``
# of a segmentation job never imports training's documents): a share of its start-up.
BUILTIN_NAMES = ("inference", "training", "segmentation", "evaluation", "pytc_config")


def job_kind(name: str) -> JobKind[Any]:
    """The kind called ``name``; a SpecError on ``kind`` naming the known ones otherwise."""
    with _lock:
        kind = _kinds.get(name)
    if kind is None and not _loaded and name in BUILTIN_NAMES:
        _load_builtin(*BUILTIN[BUILTIN_NAMES.index(name)])
    elif kind is None:
        _load_builtins()
    with _lock:
        kind = _kinds.get(name)
        known = sorted({*_kinds, *BUILTIN_NAMES})
    if kind is None:
        raise SpecError("kind", f"expected one of {', '.join(map(repr, known))}, got {name!r}")
    return kind


def kind_of(doc: object) -> JobKind[Any]:
    """The kind a job document names (``inference`` when it names none)."""
    name = kind_name(doc)
    if not isinstance(name, str):
        raise SpecError("kind", f"expected the name of a job kind, got {name!r}")
    return job_kind(name)


def parse_job(doc: Mapping[str, Any], env: ParseEnv) -> tuple[JobKind[Any], Any]:
    """The document's kind and its parsed job; a document too deep or too large to be a job is a
    SpecError before anything is built from it."""
    check_bounds(doc)
    kind = kind_of(doc)
    return kind, kind.parse(doc, env)


def documents() -> dict[str, type[BaseModel]]:
    """Each kind's document model, by kind name (the OpenAPI schema is generated from these)."""
    return {kind.name: kind.document for kind in job_kinds()}


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for module, attribute in BUILTIN:
        _load_builtin(module, attribute)
    with _lock:  # the built-in ones first, in their order, whatever was loaded before
        order = [n for n in BUILTIN_NAMES if n in _kinds] + [n for n in _kinds if n not in BUILTIN_NAMES]
        ordered = {n: _kinds[n] for n in order}
        _kinds.clear()
        _kinds.update(ordered)
    _loaded = True


def _load_builtin(module: str, attribute: str) -> None:
    kind = getattr(importlib.import_module(module), attribute)
    with _lock:
        _kinds.setdefault(kind.name, kind)
