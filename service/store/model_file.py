"""``pytc run``'s model registry without a service: one JSON file, ``<state dir>/models.json``.

A training job's ``register_as`` run by ``pytc run`` lands here, and inference jobs run by
``pytc run`` resolve ``model: {name: ...}`` from here. The REST service keeps its own registry (in
its database, ``GET /v1/models``); a job submitted to the service registers there instead.

The file maps each name to ``{kind, path, architecture, config, checkpoint, sha256, created_at}``
(:func:`service.store.models.ref_to_json`, plus the record's fields). Entries written before every
kind could be registered, ``{architecture, config, checkpoint, sha256, registered_at}`` (seconds
since the epoch), still read. Every change replaces the file atomically under an advisory lock, so
two ``pytc run`` registering at once both land.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.ref import ModelRef
from service.errors import ModelNotRegisteredError, ModelRegistryFormatError
from service.store.models import ModelRecord, new_record, ref_from_json, ref_to_json
from volumes.files import read_json, write_json_atomic

REGISTRY_FILE = "models.json"


def state_dir(environ: Mapping[str, str]) -> Path:
    """``PYTC_STATE_DIR``, else ``./.pytc`` (the contract's default)."""
    return Path(environ.get("PYTC_STATE_DIR") or ".pytc")


class FileModelRegistry:
    """The :class:`service.store.models.ModelRegistry` of ``pytc run``: ``folder/models.json``, read
    afresh on every call (another ``pytc run`` may have registered since)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / REGISTRY_FILE

    def register(self, name: str, ref: ModelRef, sha256: str | None) -> ModelRecord:
        record = new_record(name, ref, sha256)
        with self._locked():
            entries = self._entries()
            entries[name] = {
                **ref_to_json(ref),
                "sha256": sha256,
                "created_at": record.created_at.isoformat(),
            }
            write_json_atomic(self.path, entries, durable=True)  # acknowledged = kept, as in SQLite
        return record

    def get(self, name: str) -> ModelRecord:
        entry = self._entries().get(name)
        if entry is None:
            raise ModelNotRegisteredError(f"no model named {name!r} in {self.path}")
        return self._record(name, entry)

    def list(self) -> list[ModelRecord]:
        entries = self._entries()
        return [self._record(name, entries[name]) for name in sorted(entries)]

    def close(self) -> None:
        return None

    def _entries(self) -> dict[str, Any]:
        data = read_json(self.path)  # None when there is no file yet; a broken one is an error
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ModelRegistryFormatError(
                f"{self.path} holds {type(data).__name__}, not an object of models"
            )
        return data

    def _record(self, name: str, entry: Any) -> ModelRecord:
        if not isinstance(entry, dict):
            raise ModelRegistryFormatError(f"model {name!r} in {self.path} is not an object: {entry!r}")
        sha256 = entry.get("sha256")
        return ModelRecord(
            name,
            ref_from_json(entry, name, str(self.path)),
            None if sha256 is None else str(sha256),
            _created_at(entry, name, self.path),
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``.models.json.lock`` beside the file: read, change and replace are one step for
        every process that registers (readers need no lock: the replace is atomic)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{REGISTRY_FILE}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _created_at(entry: Mapping[str, Any], name: str, path: Path) -> datetime:
    """``created_at`` (ISO 8601), or an older entry's ``registered_at`` (seconds since the epoch)."""
    try:
        if "created_at" in entry:
            return datetime.fromisoformat(str(entry["created_at"]))
        return datetime.fromtimestamp(float(entry["registered_at"]), UTC)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelRegistryFormatError(
            f"model {name!r} in {path} has no valid registration time: {err}"
        ) from err
