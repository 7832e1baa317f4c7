"""``pytc run``'s model registry without a service: one JSON file, ``<state dir>/models.json``.

A training job's ``register_as`` run by ``pytc run`` lands here, and inference jobs run by
``pytc run`` resolve ``model: {name: ...}`` from here. The REST service keeps its own registry (in
its database, ``GET /v1/models``); a job submitted to the service registers there instead. The
file maps each name to ``{architecture, config, checkpoint, sha256, registered_at}`` and is
replaced atomically on every change.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.ref import ModelRef
from service.errors import ModelNotRegisteredError
from service.spec import _frozen_config

REGISTRY_FILE = "models.json"


def state_dir(environ: Mapping[str, str]) -> Path:
    """``PYTC_STATE_DIR``, else ``./.pytc`` (the contract's default)."""
    return Path(environ.get("PYTC_STATE_DIR") or ".pytc")


class FileModelRegistry:
    """Names -> trained checkpoints, in one JSON file. Last writer wins per name."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / REGISTRY_FILE

    def register(
        self, name: str, checkpoint_path: str, architecture: str, config: dict[str, Any], sha256: str
    ) -> None:
        """The :class:`service.training_runner.Register` hook."""
        entries = self.entries()
        entries[name] = {
            "architecture": architecture,
            "config": config,
            "checkpoint": str(Path(checkpoint_path).resolve()),
            "sha256": sha256,
            "registered_at": time.time(),
        }
        self._write(entries)

    def resolve(self, name: str) -> ModelRef:
        """The :data:`service.spec.ModelResolver` for ``model.name``; a LookupError when unknown."""
        entry = self.entries().get(name)
        if entry is None:
            raise ModelNotRegisteredError(f"no model named {name!r} in {self.path}")
        return ModelRef(
            "architecture",
            architecture=str(entry["architecture"]),
            config=_frozen_config(entry.get("config") or {}),
            checkpoint=str(entry["checkpoint"]),
            name=name,
        )

    def entries(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".models.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entries, handle, indent=2, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
