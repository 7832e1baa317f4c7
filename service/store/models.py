"""The model registry's contract: names -> model references that inference jobs name
(``model: {name: ...}``) and training jobs register (``register_as``).

One :class:`ModelRegistry` protocol, three implementations that pass one conformance test:

- :class:`service.store.sqlite.SqliteModelRegistry`: the service's, the ``models`` table of its
  database (``GET /v1/models``);
- :class:`service.store.model_file.FileModelRegistry`: ``pytc run``'s without a service,
  ``<state dir>/models.json``;
- :class:`service.store.memory.MemoryModelRegistry`: tests.

Both durable ones store a reference in one JSON form (:func:`ref_to_json`), so an entry means the
same wherever it is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, get_args

from models.ref import ModelKind, ModelRef
from service.errors import ModelRegistryFormatError
from service.store.jobs import utc_now

MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)


@dataclass(frozen=True)
class ModelRecord:
    """A registered model. ``ref.name`` is ``name``, so a job resolved through the registry says so."""

    name: str
    ref: ModelRef
    sha256: str | None
    created_at: datetime = field(default_factory=utc_now)


def new_record(name: str, ref: ModelRef, sha256: str | None) -> ModelRecord:
    """What :meth:`ModelRegistry.register` records: ``ref`` named ``name``, registered now."""
    return ModelRecord(name, replace(ref, name=name), sha256)


class ModelRegistry(Protocol):
    """Names -> models. Registering a name again replaces its entry. Safe to call from any thread."""

    def register(self, name: str, ref: ModelRef, sha256: str | None) -> ModelRecord: ...

    def get(self, name: str) -> ModelRecord:
        """The entry; :class:`service.errors.ModelNotRegisteredError` (a LookupError) when unknown."""
        ...

    def list(self) -> list[ModelRecord]:
        """Every entry, sorted by name."""
        ...

    def close(self) -> None:
        """Let go of what the registry holds (a database connection); a no-op where it holds nothing."""
        ...


def ref_to_json(ref: ModelRef) -> dict[str, Any]:
    """A reference as the durable registries store it: its fields, ``config`` as a mapping, and no
    ``name`` (the key it is stored under says that)."""
    return {
        "kind": ref.kind,
        "path": ref.path,
        "architecture": ref.architecture,
        "config": ref.config_dict(),
        "checkpoint": ref.checkpoint,
    }


def ref_from_json(data: Mapping[str, Any], name: str, source: str) -> ModelRef:
    """The reference :func:`ref_to_json` stored under ``name`` in ``source`` (named in errors).

    An entry without ``kind`` is an architecture with its checkpoint: ``models.json`` held only
    those before it could hold every kind.
    """
    kind = data.get("kind", "architecture")
    if kind not in MODEL_KINDS:
        raise ModelRegistryFormatError(
            f"model {name!r} in {source} has kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}"
        )
    config = data.get("config") or {}
    if not isinstance(config, Mapping):
        raise ModelRegistryFormatError(f"model {name!r} in {source}: config is not a mapping: {config!r}")
    return ModelRef(
        kind,
        path=_optional_str(data.get("path")),
        architecture=_optional_str(data.get("architecture")),
        config=tuple((str(key), _frozen(config[key])) for key in sorted(config)),
        checkpoint=_optional_str(data.get("checkpoint")),
        name=name,
    )


def _frozen(value: Any) -> Any:
    """JSON lists as tuples, at any depth: a :class:`ModelRef` is hashable (it keys caches)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
