"""Hostile and unlucky inputs are refused at admission, before anything is allocated, each with
the field named: over REST a 422 problem (never a 500), from ``pytc run`` exit 2. A legal petascale
job is admitted at a cost of kilobytes: nothing lists its windows or blocks."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
import zarr

from service.cli import main
from service.errors import SpecError
from service.kinds import parse_job
from service.kinds.base import AdmitEnv, ParseEnv
from service.kinds.inference import InferenceKind
from service.store.jobs import NewJob
from service.store.sqlite import SqliteJobStore
from tests.integration.service_fixtures import (
    Service,
    assert_problem,
    dumps,
    job_doc,
    make_data,
    running_service,
    wait_for_state,
)
from workers.limits import Limits

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PETA = (100_000, 100_000, 100_000)  # 10^15 voxels


def claimed(root: Path, name: str, **meta: Any) -> str:
    """``name.zarr``: a zarr v3 array of 10x10x10 uint8 whose ``zarr.json`` is then changed by
    ``meta`` (None removes a key); no chunk is ever written."""
    path = root / f"{name}.zarr"
    zarr.create_array(path, shape=(10, 10, 10), chunks=(5, 5, 5), dtype="uint8")
    doc = json.loads((path / "zarr.json").read_text())
    for key, value in meta.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    (path / "zarr.json").write_text(json.dumps(doc))
    return path.name


def make_world(root: Path) -> None:
    make_data(root)
    zarr.create_array(root / "peta.zarr", shape=PETA, chunks=(64, 512, 512), dtype="uint8")  # metadata only
    claimed(root, "huge", shape=[10**12] * 3)
    claimed(root, "no_dtype", data_type=None)
    claimed(root, "negative", shape=[-1, 10, 10])
    claimed(root, "codec", codecs=[{"name": "no-such-codec"}])
    claimed(root, "zero_chunks", chunk_grid={"name": "regular", "configuration": {"chunk_shape": [0, 5, 5]}})
    zarr.create_array(
        root / "objects.zarr", shape=(10, 10, 10), chunks=(5, 5, 5), dtype="uint8", zarr_format=2
    )
    meta = json.loads((root / "objects.zarr" / ".zarray").read_text())
    (root / "objects.zarr" / ".zarray").write_text(json.dumps({**meta, "dtype": "|O", "fill_value": None}))
    (root / "records.zarr").mkdir()
    records = {**meta, "dtype": [["a", "<i4"], ["b", "<f4"]], "fill_value": None}
    (root / "records.zarr" / ".zarray").write_text(json.dumps(records))


def doc_on(input_path: str | None = None, **changes: Any) -> dict[str, Any]:
    """The service fixtures' job, on ``input_path`` (an array itself) and with ``section__key`` changes."""
    doc = job_doc("never.zarr")
    if input_path is not None:
        doc["input"] = {"path": input_path}
    for name, value in changes.items():
        section, _, key = name.partition("__")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return doc


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: list[tuple[str, dict[str, Any], str, str]] = [
    ("pad 1e11 as an int", doc_on(window__pad_size=[10**11, 0, 0]), "window.pad_size", "wider than"),
    ("pad 1e11 as a float", doc_on(window__pad_size=[1e11, 0, 0]), "window.pad_size[0]", "integer"),
    ("patch 128x1024x1024", doc_on(window__patch_size=[128, 1024, 1024], window__stride=[64, 512, 512]),
     "window.patch_size", "GiB"),
    ("a claimed shape of 10^12 per axis", doc_on("huge.zarr"), "input.path",
     "[1000000000000, 1000000000000, 1000000000000]"),
    ("zarr.json without data_type", doc_on("no_dtype.zarr"), "input.path", "zarr.json"),
    ("zarr.json with a negative shape", doc_on("negative.zarr"), "input.path", "zarr.json"),
    ("zarr.json with an unknown codec", doc_on("codec.zarr"), "input.path", "no-such-codec"),
    ("zarr.json with chunks of 0", doc_on("zero_chunks.zarr"), "input.path", "chunks [0, 5, 5]"),
    ("an object array", doc_on("objects.zarr"), "input.path", ".zarray"),
    ("a structured array", doc_on("records.zarr"), "input.path", "structured"),
    ("in_channels 1e12", doc_on(model={"architecture": "unet3d", "config": {"in_channels": 10**12}}),
     "model.config", "parameters"),
    ("filters [768]*5", doc_on(model={"architecture": "unet3d", "config": {"filters": [768] * 5}}),
     "model.config", "parameters"),
    ("a path of 5000 bytes", doc_on("a" * 5000), "input.path", "at most 4096"),
    ("an output name of 300 bytes", doc_on(output__path="o" * 300), "output.path", "at most 255"),
    ("a dataset name of 300 bytes", doc_on(output__dataset="d" * 300), "output.dataset", "at most 255"),
    ("a registered name of 300 bytes", doc_on(model={"name": "m" * 300}), "model.name", "at most 255"),
    ("model.config nested 31 deep", doc_on(model={"architecture": "unet3d", "config": {"filters": deep(29)}}),
     "model.config", "filters"),
    ("model.config nested 40 deep", doc_on(model={"architecture": "unet3d", "config": {"filters": deep(40)}}),
     "model.config.filters", "levels deep"),
    ("model.config nested 5000 deep", doc_on(model={"architecture": "unet3d", "config": {"filters": "DEEP"}}),
     "body", "not a JSON job document"),
]  # fmt: skip


@dataclass
class World:
    service: Service
    root: Path
    http: httpx.Client

    def submit(self, doc: Any) -> httpx.Response:
        """``doc`` as JSON; a ``"DEEP"`` in it becomes lists nested 5000 deep (json.dumps would
        reach Python's recursion limit writing them)."""
        body = dumps(doc).replace(b'"DEEP"', b"[" * 5000 + b"]" * 5000)
        return self.http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})

    def rss(self) -> int:
        return int(psutil.Process(self.service.service_pid()).memory_info().rss)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("admission")
    make_world(base / "root")
    with (
        running_service(base / "root", base / "state", PYTC_API_TOKENS=TOKEN) as service,
        httpx.Client(base_url=service.url, headers=AUTH, timeout=120) as http,
    ):
        yield World(service, base / "root", http)


@pytest.mark.parametrize(("name", "doc", "field", "says"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_each_hostile_job_is_a_422_naming_the_field(
    world: World, name: str, doc: dict[str, Any], field: str, says: str
) -> None:
    problem = assert_problem(world.submit(doc), 422)
    locs = [e["loc"] for e in problem["errors"]]
    assert any(loc.startswith(field) for loc in locs), problem
    assert says in problem["detail"], problem
    assert world.http.get("/v1/jobs").json()["jobs"] == []  # nothing was recorded


def test_a_poison_pad_leaves_the_service_flat(world: World) -> None:
    assert_problem(world.submit(doc_on(window__pad_size=[10**11, 0, 0])), 422)  # the code path warm
    before = world.rss()
    started = time.monotonic()
    for _ in range(20):
        assert_problem(world.submit(doc_on(window__pad_size=[10**11, 0, 0])), 422)
    assert time.monotonic() - started < 60  # twenty answers, each from arithmetic (a loose guard)
    assert world.rss() - before < 30 << 20  # it grew 800 MiB in 8 s before the bound


# --- in-process: what pytc run does, and the admission of a legal petascale job -----------------


def test_a_legal_petascale_job_is_admitted_for_kilobytes(tmp_path: Path) -> None:
    make_world(tmp_path)
    kind, env = InferenceKind(), ParseEnv((tmp_path,))
    admit = AdmitEnv(lambda fn, *args: fn(*args), Limits())  # as pytc run: the checks in this process
    doc = doc_on("peta.zarr", output={"path": "peta_out.zarr", "dataset": "pred", "chunks": [64, 512, 512]},
                 compute={"block_shape": [64, 512, 512]})  # fmt: skip
    for _ in range(2):  # the model is loaded once, as by a first submission, and lazy imports done
        kind.admit(parse_job(doc, env)[1], admit)
    tracemalloc.start()
    try:
        _, job = parse_job(doc, env)
        checked = kind.admit(job, admit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert checked.output == "absent" and checked.source.shape == PETA
    assert peak < 256 << 10  # ~20 KiB; a list of its 6 10^7 blocks alone would be gigabytes
    assert not (tmp_path / "peta_out.zarr").exists()  # admission writes nothing


def test_the_bounds_count_windows_chunks_and_blocks_per_axis_of_the_input(tmp_path: Path) -> None:
    make_world(tmp_path)
    kind, env = InferenceKind(), ParseEnv((tmp_path,))
    admit = AdmitEnv(lambda fn, *args: fn(*args), Limits(max_axis_count=25_000))
    doc = doc_on("peta.zarr", output={"path": "o.zarr", "dataset": "pred", "chunks": [64, 512, 512]},
                 compute={"block_shape": [64, 512, 512]})  # fmt: skip
    with pytest.raises(SpecError) as caught:  # stride 2 along z: 50,000 windows
        kind.admit(kind.parse(doc, env), admit)
    assert caught.value.field == "window.stride" and "axis z" in caught.value.reason
    doc["window"]["stride"] = [5, 2, 2]
    with pytest.raises(SpecError) as caught:  # 20,000 along z, 50,000 along y and x
        kind.admit(kind.parse(doc, env), admit)
    assert caught.value.field == "window.stride" and "axis y" in caught.value.reason
    doc["window"]["stride"] = [5, 8, 8]
    doc["output"]["chunks"] = [1, 512, 512]
    with pytest.raises(SpecError) as caught:  # 100,000 chunks along z
        kind.admit(kind.parse(doc, env), admit)
    assert caught.value.field == "output.chunks" and "100000 chunks along axis z" in caught.value.reason


def test_pytc_run_refuses_with_exit_2_and_honours_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("WORKER_MEMORY_BYTES", "MAX_INPUT_VOXELS", "DATA_ROOTS"):
        monkeypatch.delenv(f"PYTC_{name}", raising=False)

    def run(doc: dict[str, Any]) -> tuple[int, str]:
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
        code = main(["run", str(tmp_path / "job.yaml"), "--quiet"])
        return code, capsys.readouterr().err

    code, err = run(doc_on(window__pad_size=[10**11, 0, 0]))
    assert code == 2 and "window.pad_size" in err and "Traceback" not in err
    code, err = run(doc_on("huge.zarr"))
    assert code == 2 and "input.path" in err and "PYTC_MAX_INPUT_VOXELS" in err
    monkeypatch.setenv("PYTC_MAX_INPUT_VOXELS", str(10**40))
    code, err = run(doc_on("huge.zarr"))
    assert code == 2 and "window.stride" in err and "PYTC_MAX_AXIS_COUNT" in err  # past the shape bound
    monkeypatch.setenv("PYTC_WORKER_MEMORY_BYTES", "3000000")
    code, err = run(doc_on())
    assert code == 2 and "window.batch_size" in err and "a batch of 3 fits" in err
    monkeypatch.setenv("PYTC_WORKER_MEMORY_BYTES", "lots")
    code, err = run(doc_on())
    assert code == 2 and "PYTC_WORKER_MEMORY_BYTES" in err and "Traceback" not in err
    monkeypatch.delenv("PYTC_WORKER_MEMORY_BYTES")
    monkeypatch.setenv("PYTC_MAX_MODEL_BYTES", "big")
    code, err = run(doc_on())
    assert code == 2 and "PYTC_MAX_MODEL_BYTES" in err and "Traceback" not in err


def test_poison_jobs_recorded_before_the_bounds_fail_when_picked_up(tmp_path: Path) -> None:
    """An older service accepted them; after a restart each is picked up again, and now fails
    naming the field instead of growing the service without end."""
    root, state = tmp_path / "root", tmp_path / "state"
    make_world(root)
    state.mkdir()
    store = SqliteJobStore(state / "jobs.sqlite3")
    poison = {
        "pad": doc_on(window__pad_size=[10**11, 0, 0]),
        "claims": doc_on("huge.zarr"),  # its zarr.json claims 10^12 per axis
    }
    for name, doc in poison.items():
        store.create_job(NewJob(name, "inference", doc, output_key=f"{name}::pred"))
    # jobs recorded with no owner (as an older service did) are visible to admins only
    with running_service(root, state, PYTC_ADMIN_TOKENS=TOKEN) as service:
        jobs = {
            name: wait_for_state(service.url, name, ("failed", "succeeded"), AUTH, 120) for name in poison
        }
        rss = psutil.Process(service.service_pid()).memory_info().rss
    assert jobs["pad"]["state"] == "failed" and "window.pad_size" in jobs["pad"]["error"]["detail"]
    assert (
        jobs["claims"]["state"] == "failed" and "PYTC_MAX_INPUT_VOXELS" in jobs["claims"]["error"]["detail"]
    )
    assert rss < 400 << 20
