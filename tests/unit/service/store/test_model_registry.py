"""One conformance test for every :class:`service.store.models.ModelRegistry`: SQLite (the
service's), the ``models.json`` file (``pytc run``'s) and in memory; and that each durable one
reads what the code before it wrote."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.ref import ModelRef
from service.errors import ModelNotRegisteredError, ModelRegistryFormatError
from service.store.memory import MemoryModelRegistry
from service.store.model_file import FileModelRegistry, state_dir
from service.store.models import ModelRegistry
from service.store.sqlite import SqliteJobStore, SqliteModelRegistry

DURABLE: dict[str, Callable[[Path], ModelRegistry]] = {
    "sqlite": lambda folder: SqliteModelRegistry(folder / "jobs.sqlite3"),
    "file": FileModelRegistry,
}
UNET = ModelRef(
    "architecture",
    architecture="unet3d",
    config=(("filters", (8, 16)), ("in_channels", 1), ("kernels", ((1, 3, 3), (3, 3, 3)))),
    checkpoint="/runs/mito/checkpoint_00500.pth.tar",
)
EVERY_KIND = {
    "torchscript": ModelRef("torchscript", path="/models/net.pt"),
    "exported": ModelRef("exported", path="/models/net.pt2"),
    "architecture": UNET,
    "architecture-without-weights": ModelRef("architecture", architecture="unet3d"),
    "architecture-with-scalars": ModelRef(
        "architecture", architecture="unet3d", config=(("dropout", 0.25), ("norm", "bn"), ("residual", True))
    ),
}


@pytest.fixture(params=[*DURABLE, "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelRegistry]:
    made = MemoryModelRegistry() if request.param == "memory" else DURABLE[request.param](tmp_path / "state")
    yield made
    made.close()


def test_a_model_is_registered_and_read_back(registry: ModelRegistry) -> None:
    record = registry.register("mito", UNET, "ab" * 32)
    assert record.name == "mito" and record.ref == replace(UNET, name="mito") and record.sha256 == "ab" * 32
    assert registry.get("mito") == record
    assert record.ref.config_dict() == {
        "filters": [8, 16],
        "in_channels": 1,
        "kernels": [(1, 3, 3), (3, 3, 3)],
    }
    hash(record.ref)  # a reference keys caches: what a registry gives back must stay hashable


def test_registering_a_name_again_replaces_it(registry: ModelRegistry) -> None:
    registry.register("mito", UNET, "ab" * 32)
    again = registry.register("mito", ModelRef("torchscript", path="/models/v2.pt"), None)
    got = registry.get("mito")
    assert got == again and got.ref.kind == "torchscript" and got.ref.path == "/models/v2.pt"
    assert got.sha256 is None and [m.name for m in registry.list()] == ["mito"]


def test_an_unknown_name_is_not_registered(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotRegisteredError, match="'nope'"):
        registry.get("nope")
    registry.register("mito", UNET, None)
    with pytest.raises(LookupError):  # what the job parser catches to name ``model.name``
        registry.get("nope")


def test_the_list_is_sorted_by_name(registry: ModelRegistry) -> None:
    assert registry.list() == []
    for name in ("mito", "cells", "Axons", "axons"):
        registry.register(name, UNET, None)
    listed = registry.list()
    assert [m.name for m in listed] == ["Axons", "axons", "cells", "mito"]
    assert listed == [registry.get(m.name) for m in listed]


@pytest.mark.parametrize("label", EVERY_KIND)
def test_every_kind_of_model_round_trips(registry: ModelRegistry, label: str) -> None:
    ref = EVERY_KIND[label]
    record = registry.register(label, ref, "cd" * 32)
    assert registry.get(label) == record and record.ref == replace(ref, name=label)


@pytest.mark.parametrize("kind", DURABLE)
def test_a_durable_registry_is_read_back_by_a_fresh_instance(kind: str, tmp_path: Path) -> None:
    first = DURABLE[kind](tmp_path)
    made = [first.register(label, ref, f"{i:064x}") for i, (label, ref) in enumerate(EVERY_KIND.items())]
    second = DURABLE[kind](tmp_path)  # the first is still open, as another process would hold it
    assert second.list() == sorted(made, key=lambda m: m.name)
    second.register("late", UNET, None)
    assert first.get("late").ref == replace(UNET, name="late")
    first.close()
    second.close()


# --- pytc run's file ------------------------------------------------------------------------------


def test_the_file_registry_reads_an_old_models_json(tmp_path: Path) -> None:
    """Before it held every kind, the file held architectures only: no ``kind``, the registration
    time in seconds since the epoch."""
    old = {
        "mito": {
            "architecture": "unet3d",
            "config": {"filters": [2, 4], "out_channels": 1},
            "checkpoint": "/runs/mito/checkpoint_00100.pth.tar",
            "sha256": "ab",
            "registered_at": 1_700_000_000.25,
        }
    }
    (tmp_path / "models.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    registry = FileModelRegistry(tmp_path)
    got = registry.get("mito")
    assert got.ref == ModelRef(
        "architecture",
        architecture="unet3d",
        config=(("filters", (2, 4)), ("out_channels", 1)),
        checkpoint="/runs/mito/checkpoint_00100.pth.tar",
        name="mito",
    )
    assert got.sha256 == "ab" and got.created_at == datetime.fromtimestamp(1_700_000_000.25, UTC)
    registry.register("cells", EVERY_KIND["torchscript"], None)  # a new entry beside the old one
    assert [m.name for m in FileModelRegistry(tmp_path).list()] == ["cells", "mito"]
    assert json.loads((tmp_path / "models.json").read_text())["mito"] == old["mito"]


def test_the_file_registry_names_a_damaged_file(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    (tmp_path / "models.json").write_text("[]")
    with pytest.raises(ModelRegistryFormatError, match=r"models\.json holds list"):
        registry.list()
    (tmp_path / "models.json").write_text(json.dumps({"m": {"kind": "onnx", "path": "/m.onnx"}}))
    with pytest.raises(ModelRegistryFormatError, match=r"'m' in .*models\.json has kind 'onnx'"):
        registry.get("m")
    (tmp_path / "models.json").write_text("{")
    with pytest.raises(ValueError, match=r"models\.json is not valid JSON"):
        registry.get("m")


def test_concurrent_registrations_all_land_in_the_file(tmp_path: Path) -> None:
    def register(worker: int) -> None:
        registry = FileModelRegistry(tmp_path)
        for i in range(5):
            registry.register(f"m{worker}-{i}", UNET, None)

    threads = [threading.Thread(target=register, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(FileModelRegistry(tmp_path).list()) == 30


def test_state_dir() -> None:
    assert state_dir({"PYTC_STATE_DIR": "/x"}) == Path("/x") and state_dir({}) == Path(".pytc")


# --- the service's database -----------------------------------------------------------------------

# The schema the job store created when it also kept the models (the models table is unchanged).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    progress TEXT,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    output_key TEXT,
    idempotency_key TEXT UNIQUE,
    request_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_output ON jobs (output_key, state);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    sha256 TEXT,
    created_at TEXT NOT NULL
);
"""


def test_the_sqlite_registry_reads_a_database_made_by_the_old_store(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    created = "2025-01-02T03:04:05.123456+00:00"
    unet = {"kind": "architecture", "path": None, "architecture": "unet3d", "name": None}
    script = {"kind": "torchscript", "path": "/models/net.pt", "architecture": None, "name": None}
    rows = [  # the old store's JSON of a reference: every field, name null, config a mapping
        (
            "mito",
            {**unet, "config": {"filters": [8, 16], "in_channels": 1}, "checkpoint": "/runs/c.pth"},
            "ab",
        ),
        ("cells", {**script, "config": {}, "checkpoint": None}, None),
    ]
    for name, ref, sha256 in rows:
        db.execute(
            "INSERT INTO models (name, ref, sha256, created_at) VALUES (?, ?, ?, ?)",
            (name, json.dumps(ref, sort_keys=True), sha256, created),
        )
    db.execute(
        "INSERT INTO jobs (id, kind, state, spec, created_at)"
        " VALUES ('j', 'inference', 'succeeded', '{}', ?)",
        (created,),
    )
    db.commit()
    db.close()

    registry, store = SqliteModelRegistry(path), SqliteJobStore(path)  # as the service opens them
    assert [m.name for m in registry.list()] == ["cells", "mito"]
    mito = registry.get("mito")
    config = (("filters", (8, 16)), ("in_channels", 1))
    assert mito.ref == replace(UNET, config=config, checkpoint="/runs/c.pth", name="mito")
    assert mito.sha256 == "ab" and mito.created_at == datetime.fromisoformat(created)
    assert registry.get("cells").ref == ModelRef("torchscript", path="/models/net.pt", name="cells")
    assert store.get_job("j").state == "succeeded"
    registry.register("new", EVERY_KIND["exported"], None)  # and it writes beside the old rows
    reopened = SqliteModelRegistry(path)
    assert [m.name for m in reopened.list()] == ["cells", "mito", "new"]
    for closing in (reopened, store, registry):
        closing.close()
