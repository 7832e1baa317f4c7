"""``pytc-serve`` end to end: a real service process on 127.0.0.1, real SQLite, real Dask."""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
import zarr

from models.ref import ModelRef
from service.cli import main
from service.client import PytcClient
from service.errors import ClientError
from service.store.sqlite import SqliteModelRegistry
from tests.integration.service_fixtures import (
    Service,
    assert_problem,
    dumps,
    free_port,
    job_doc,
    make_data,
    make_service,
    read_output,
    running_service,
    tree,
    wait_for_state,
)
from workers.inference.ledger import done_count

# Submitting validates the model on a worker; on a loaded machine that takes seconds.
_post = functools.partial(httpx.post, timeout=120)

TOKEN = "right-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTHER = {"Authorization": "Bearer other-token"}
ADMIN = "admin-token"
FINAL = ("succeeded", "failed", "cancelled")
BIN = Path(sys.executable).parent


@dataclass
class World:
    service: Service
    root: Path
    outside: Path
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.service.url

    def submit(self, doc: Any, **headers: str) -> httpx.Response:
        return self.http.post(
            "/v1/jobs", content=dumps(doc), headers={"Content-Type": "application/json", **headers}
        )

    def run(self, doc: dict[str, Any]) -> dict[str, Any]:
        response = self.submit(doc)
        assert response.status_code == 202, response.text
        return wait_for_state(self.url, response.json()["id"], FINAL, AUTH)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("service")
    root, outside = make_data(base / "root"), make_data(base / "outside")
    make_data(root / "big", shape=(16, 96, 96))  # 144 blocks: runs long enough to be cancelled
    zarr.open_group(root / "em2.zarr", mode="w").create_array("raw", shape=(2, 12, 40, 40), dtype="uint8")
    zarr.open_group(root / "taken.zarr", mode="w").create_array(
        "pred", shape=(2, 12, 40, 40), dtype="float32"
    )
    (root / "junk.pt").write_text("not a model")
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    env = {
        "PYTC_API_TOKENS": f"other-token,{TOKEN}",
        "PYTC_ADMIN_TOKENS": ADMIN,
        "PYTC_MAX_CONCURRENT_JOBS": "1",
    }
    with (
        running_service(root, base / "state", **env) as service,
        httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as http,
    ):
        yield World(service, root, outside, http)


def test_submit_watch_the_events_and_get_what_pytc_run_makes(world: World, tmp_path: Path) -> None:
    with PytcClient(world.url, token=TOKEN) as client:
        job = client.submit(job_doc("served.zarr"))
        assert job["state"] == "queued" and job["spec"]["output"]["path"] == "served.zarr"
        events = list(client.events(job["id"]))
    assert events[0].event == "state" and events[-1].event == "state"
    final = events[-1].data
    assert final["state"] == "succeeded", final
    progress = final["progress"]
    assert progress["unit"] == "steps" and progress["done"] == progress["total"] > 27
    pyramid = progress["parts"]["pyramid"][1]  # the coarser levels' chunks, written after level 0
    assert pyramid > 0
    assert progress["total"] == progress["windows_total"] + progress["chunks_total"] + pyramid
    assert progress["blocks_done"] == progress["blocks_total"] == 27
    assert progress["voxels_done"] == progress["voxels_total"] == 12 * 40 * 40
    assert progress["parts"] == {
        "windows": [progress["windows_total"]] * 2,
        "chunks": [progress["chunks_total"]] * 2,
        "blocks": [27, 27],
        "pyramid": [pyramid, pyramid],
    }
    assert world.http.get(f"/v1/jobs/{job['id']}").json()["progress"] == progress  # stored, as streamed
    assert final["progress"]["fraction"] == 1.0 and final["links"]["dashboard"].startswith(
        "http://127.0.0.1:"
    )
    done = [e.data["progress"]["done"] for e in events]
    assert done == sorted(done)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job_doc(str(tmp_path / "cli.zarr"))))
    assert main(["run", str(tmp_path / "job.yaml"), "--data-root", str(world.root), "--data-root",
                 str(tmp_path), "--quiet"]) == 0  # fmt: skip
    np.testing.assert_array_equal(read_output(world.root / "served.zarr"), read_output(tmp_path / "cli.zarr"))


def test_metrics_count_jobs_and_blocks_and_the_service_holds_no_torch(world: World) -> None:
    world.run(job_doc("metered.zarr"))
    deadline = time.monotonic() + 10
    while "pytc_block_duration_seconds_count" not in (text := httpx.get(f"{world.url}/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    assert 'pytc_jobs{state="succeeded"}' in text and "pytc_dask_workers 1" in text
    blocks = next(line for line in text.splitlines() if line.startswith("pytc_blocks_done_total"))
    assert int(blocks.split()[1]) >= 27
    assert "job_id" not in text and "pytc_queue_depth" in text and "pytc_voxels_processed_total" in text
    maps = Path(f"/proc/{world.service.service_pid()}/maps").read_text()
    assert "libtorch" not in maps


def test_the_service_and_its_embedded_cluster_listen_on_loopback_only(world: World) -> None:
    """Dask's ports (scheduler, workers, nanny, the scheduler's HTTP endpoints) never leave the
    host: the service was started with --host 127.0.0.1, so nothing of its tree may listen wider."""
    import psutil

    service = psutil.Process(world.service.service_pid())
    listening = [
        (p.pid, c.laddr.ip, c.laddr.port)
        for p in [service, *service.children(recursive=True)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 4, listening  # API, scheduler, its HTTP server, a worker, a nanny
    assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc[section].__setitem__(key, value)


BAD_JOBS: list[tuple[str, Callable[[dict[str, Any]], None], int, str]] = [
    ("unknown field", _set("window", "patchsize", [1, 2, 3]), 422, "window.patchsize"),
    ("wrong type", _set("window", "patch_size", "big"), 422, "window.patch_size"),
    ("missing input", _set("input", "path", "missing.zarr"), 422, "input.path"),
    ("missing dataset", _set("input", "dataset", "nope"), 422, "input.dataset"),
    ("roi outside", _set("input", "roi", {"offset": [10, 0, 0], "shape": [4, 40, 40]}), 422, "input.roi"),
    ("heads", _set("output", "heads", [3]), 422, "output.heads"),
    ("activations", _set("output", "activation", ["sigmoid", "none"]), 422, "output.activation"),
    ("block shape", _set("compute", "block_shape", [3, 16, 16]), 422, "compute.block_shape"),
    ("no model file", lambda d: d.__setitem__("model", {"torchscript": "nope.pt"}), 422, "model.torchscript"),
    ("junk model", lambda d: d.__setitem__("model", {"torchscript": "junk.pt"}), 422, "model.torchscript"),
    ("unregistered", lambda d: d.__setitem__("model", {"name": "nobody"}), 422, "model.name"),
    ("two models", _set("model", "exported", "net.pt2"), 422, "model"),
    ("channels", _set("input", "path", "em2.zarr"), 422, "model"),
    ("training", lambda d: d.__setitem__("kind", "training"), 422, "data"),
    ("output exists", _set("output", "path", "taken.zarr"), 409, "output.path"),
]


@pytest.mark.parametrize(("name", "change", "status", "loc"), BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_every_bad_job_gets_its_status_naming_the_field(
    world: World, name: str, change: Callable[[dict[str, Any]], None], status: int, loc: str
) -> None:
    doc = job_doc("never.zarr")
    change(doc)
    before = tree(world.root)
    body = assert_problem(world.submit(doc), status)
    assert loc in [e["loc"] for e in body["errors"]], body
    assert tree(world.root) == before


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{", "not a JSON"), (b"[1, 2]", "JSON object"), (b'{"kind": 1, "kind": 2}', "duplicate key"),
     (b'{"window": {"overlap": NaN}}', "NaN")],
)  # fmt: skip
def test_a_body_that_is_no_job_document_is_422(world: World, body: bytes, reason: str) -> None:
    problem = assert_problem(world.http.post("/v1/jobs", content=body), 422)
    assert problem["errors"][0]["loc"] == "body" and reason in problem["detail"]


def test_errors_of_routes_methods_and_parameters_are_problems(world: World) -> None:
    assert "no job" in assert_problem(world.http.get("/v1/jobs/unknown"), 404)["detail"]
    assert_problem(world.http.post("/v1/jobs/unknown/cancel"), 404)
    assert_problem(world.http.get("/v1/jobs/unknown/events"), 404)
    assert_problem(world.http.get("/v1/models/unknown"), 404)
    assert_problem(world.http.get("/v1/nothing"), 404)
    gone = assert_problem(world.http.delete("/v1/jobs"), 405)
    assert gone and world.http.delete("/v1/jobs").headers["allow"] == "GET, POST"
    limit = assert_problem(world.http.get("/v1/jobs", params={"limit": 0}), 422)
    assert limit["errors"][0]["loc"] == "query.limit"
    assert_problem(world.http.get("/v1/jobs", params={"page_token": "not a token"}), 422)
    assert_problem(world.http.get("/v1/jobs", params={"state": "sleeping"}), 422)
    assert_problem(world.http.post("/v1/jobs", content=b"{" + b" " * (2 << 20) + b"}"), 413)


def test_what_a_page_of_another_origin_can_make_a_browser_send_is_refused(world: World) -> None:
    """Without tokens any page could have a visitor's browser post a job or a cancel (a form post
    or text/plain needs no CORS preflight): refused, and nothing is created."""
    before = world.http.get("/v1/jobs").json()["jobs"]
    page = {"Origin": "https://elsewhere.example"}
    assert_problem(world.http.post("/v1/jobs", content=dumps(job_doc("x.zarr")), headers={
        **page, "Content-Type": "application/json"}), 403)  # fmt: skip
    for media in ("text/plain", "application/x-www-form-urlencoded"):
        refused = world.http.post(
            "/v1/jobs", content=dumps(job_doc("x.zarr")), headers={"Content-Type": media}
        )
        assert "application/json" in assert_problem(refused, 415)["detail"]
    assert_problem(world.http.post("/v1/jobs/unknown/cancel", headers=page), 403)
    assert world.http.get("/v1/jobs").json()["jobs"] == before


ESCAPES = [
    ("input.path", "../outside/em.zarr"),
    ("input.path", "{outside}/em.zarr"),
    ("input.path", "link_out/em.zarr"),
    ("input.path", "loop_a/em.zarr"),
    ("input.path", "em.zarr\x00/../../outside/em.zarr"),
    ("input.dataset", "../../outside/em.zarr/raw"),
    ("output.path", "../outside/new.zarr"),
    ("output.path", "{outside}/new.zarr"),
    ("output.path", "link_out/new.zarr"),
    ("output.path", "loop_b/new.zarr"),
    ("output.dataset", "../../outside/new"),
    ("model.torchscript", "../outside/net.pt"),
    ("model.torchscript", "{outside}/net.pt"),
    ("model.torchscript", "link_out/net.pt"),
    ("model.torchscript", "loop_a"),
    ("model.torchscript", "/etc/hostname"),
]


def test_paths_escaping_the_data_root_are_refused_and_nothing_is_written_outside(world: World) -> None:
    outside_before, root_before = tree(world.outside), tree(world.root)
    for field, raw in ESCAPES:
        section, key = field.split(".")
        doc = job_doc("escape.zarr")
        doc[section][key] = raw.format(outside=world.outside)
        if section == "model":
            doc["model"] = {"torchscript": raw.format(outside=world.outside)}
        body = assert_problem(world.submit(doc), 422)
        assert field in [e["loc"] for e in body["errors"]], (field, raw, body)
    # The escapes name a valid input, model and output place outside: accepted, they would run.
    assert tree(world.outside) == outside_before and tree(world.root) == root_before


def test_tokens_none_wrong_and_right(world: World) -> None:
    url = world.url
    missing = assert_problem(httpx.get(f"{url}/v1/jobs"), 401)
    assert "Bearer" in httpx.get(f"{url}/v1/jobs").headers["www-authenticate"] and missing["detail"]
    assert_problem(httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    assert_problem(httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert_problem(_post(f"{url}/v1/jobs", content=b"{"), 401)  # the token is checked first
    assert httpx.get(f"{url}/v1/jobs", headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer other-token"}).status_code == 200
    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{probe}").status_code == 200, probe


def test_a_token_sees_and_cancels_its_own_jobs_only_and_an_admin_sees_all(world: World) -> None:
    mine = world.submit(job_doc("tenant-a.zarr"), **{"Idempotency-Key": "shared-key"})
    theirs = _post(
        f"{world.url}/v1/jobs",
        content=dumps(job_doc("tenant-b.zarr")),
        headers={**OTHER, "Content-Type": "application/json", "Idempotency-Key": "shared-key"},
    )
    assert mine.status_code == theirs.status_code == 202, theirs.text
    a_id, b_id = mine.json()["id"], theirs.json()["id"]
    assert a_id != b_id and "idempotent-replayed" not in theirs.headers  # keys are per token

    with httpx.Client(base_url=world.url, headers=OTHER, timeout=60) as other:
        unknown = assert_problem(other.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404)
        hidden = assert_problem(other.get(f"/v1/jobs/{a_id}"), 404)
        assert hidden["detail"] == unknown["detail"].replace("0123456789abcdef0123456789abcdef", a_id)
        assert_problem(other.post(f"/v1/jobs/{a_id}/cancel"), 404)
        assert_problem(other.get(f"/v1/jobs/{a_id}/events"), 404)
        listed = [j["id"] for j in other.get("/v1/jobs", params={"limit": 500}).json()["jobs"]]
        assert b_id in listed and a_id not in listed
        assert other.get(f"/v1/jobs/{b_id}").status_code == 200
    assert_problem(world.http.get(f"/v1/jobs/{b_id}"), 404)
    assert b_id not in [j["id"] for j in world.http.get("/v1/jobs", params={"limit": 500}).json()["jobs"]]

    admin = {"Authorization": f"Bearer {ADMIN}"}
    everything = httpx.get(f"{world.url}/v1/jobs", params={"limit": 500}, headers=admin).json()["jobs"]
    assert {a_id, b_id} <= {j["id"] for j in everything}
    for job_id in (a_id, b_id):
        final = wait_for_state(world.url, job_id, FINAL, admin)
        assert final["state"] == "succeeded", final
    assert wait_for_state(world.url, a_id, FINAL, AUTH)["state"] == "succeeded"  # untouched by B


def recorded(run: Path, phase: int) -> int:
    """Blocks recorded done in ``phase`` in the run folders under ``run``."""
    return sum(done_count(folder)[phase - 1] for folder in run.rglob("*") if (folder / "done.snap").exists())


def test_a_job_that_fails_for_good_leaves_its_markers_and_no_partial_sums(world: World) -> None:
    shutil.copytree(world.root / "em.zarr", world.root / "corrupt.zarr")
    (world.root / "corrupt.zarr" / "raw" / "c" / "2" / "2" / "2").write_bytes(b"not zstd" * 64)
    final = world.run(job_doc("failed.zarr", input__path="corrupt.zarr"))
    assert final["state"] == "failed" and final["error"]["title"] == "job failed", final
    run = world.root / "failed.zarr" / ".pytc-run"
    pass1, pass2 = recorded(run, 1), recorded(run, 2)
    assert pass1 > pass2  # blocks whose partial sums waited for a pass 2 that never came
    assert not list(run.rglob("*.spill")), "the failed job's scratch is left"


def test_deleting_a_job_forgets_it_and_drops_the_partial_sums_a_cancel_kept(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    big = world.submit(job_doc("deleted.zarr", input__path="big/em.zarr")).json()
    run = world.root / "deleted.zarr" / ".pytc-run"
    deadline = time.monotonic() + 120
    while not list(run.rglob("*.spill")):  # some blocks' partial sums wait for their pass 2
        assert time.monotonic() < deadline, "no partial sums after 120 s"
        time.sleep(0.1)
    assert_problem(world.http.delete(f"/v1/jobs/{big['id']}"), 409)  # running: cancel it first
    world.http.post(f"/v1/jobs/{big['id']}/cancel")
    assert wait_for_state(world.url, big["id"], FINAL, AUTH)["state"] == "cancelled"
    assert list(run.rglob("*.spill"))  # a cancelled job resumes: its sums are kept
    markers = recorded(run, 1)
    assert_problem(httpx.delete(f"{world.url}/v1/jobs/{big['id']}", headers=OTHER), 404)  # not B's
    monkeypatch.setenv("PYTC_TOKEN", TOKEN)
    assert main(["delete", big["id"], "--url", world.url]) == 0  # DELETE /v1/jobs/{id}: 204
    assert capsys.readouterr().out.strip() == f"deleted job {big['id']}"
    assert_problem(world.http.get(f"/v1/jobs/{big['id']}"), 404)
    assert main(["delete", big["id"], "--url", world.url]) == 1 and "404" in capsys.readouterr().err
    assert not list(run.rglob("*.spill"))  # none either from a block still finishing when it was cancelled
    assert markers <= recorded(run, 1)  # what it finished stays recorded
    assert (world.root / "deleted.zarr").is_dir()  # what it wrote stays


def test_idempotency_same_key_same_body_and_other_body(world: World) -> None:
    doc = job_doc("idempotent.zarr")
    first = world.submit(doc, **{"Idempotency-Key": "key-1"})
    reordered = dict(reversed(list(doc.items())))
    again = world.submit(reordered, **{"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    other = assert_problem(world.submit(job_doc("other.zarr"), **{"Idempotency-Key": "key-1"}), 409)
    assert other["type"].endswith("idempotency-key-reused")
    assert wait_for_state(world.url, first.json()["id"], FINAL, AUTH)["state"] == "succeeded"
    jobs = world.http.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert [j["spec"]["output"]["path"] for j in jobs].count("idempotent.zarr") == 1


def test_cancel_over_rest_a_running_and_a_queued_job(world: World) -> None:
    big = world.submit(job_doc("cancelled.zarr", input__path="big/em.zarr")).json()
    wait_for_state(world.url, big["id"], ("running",), AUTH)
    small = world.submit(job_doc("waiting.zarr")).json()  # one job at a time: this one waits
    queued = world.http.post(f"/v1/jobs/{small['id']}/cancel")
    assert queued.status_code == 202 and queued.json()["state"] == "cancelled"
    running = world.http.post(f"/v1/jobs/{big['id']}/cancel")
    assert running.status_code == 202
    final = wait_for_state(world.url, big["id"], FINAL, AUTH)
    assert final["state"] == "cancelled" and final["error"]["title"] == "cancelled"
    assert final["progress"]["done"] < final["progress"]["total"]
    assert final["progress"]["blocks_done"] < final["progress"]["blocks_total"] == 144
    again = assert_problem(world.http.post(f"/v1/jobs/{big['id']}/cancel"), 409)
    assert again["type"].endswith("job-finished")
    assert not (world.root / "waiting.zarr").exists()


def test_registered_models_are_listed_and_named_by_jobs(world: World) -> None:
    registry = SqliteModelRegistry(world.service.state_dir / "jobs.sqlite3")  # another process, one WAL file
    sha = hashlib.sha256((world.root / "net.pt").read_bytes()).hexdigest()
    registry.register("tiny", ModelRef("torchscript", path=str(world.root / "net.pt")), sha)
    registry.register("escaped", ModelRef("torchscript", path=str(world.outside / "net.pt")), None)
    registry.close()
    models = {m["name"]: m for m in world.http.get("/v1/models").json()["models"]}
    assert models["tiny"]["sha256"] == sha and models["tiny"]["kind"] == "torchscript"
    assert world.http.get("/v1/models/tiny").json()["path"] == str(world.root / "net.pt")
    final = world.run(job_doc("named.zarr", model={"name": "tiny"}))
    assert final["state"] == "succeeded", final
    refused = assert_problem(world.submit(job_doc("named2.zarr", model={"name": "escaped"})), 422)
    assert refused["errors"][0]["loc"] == "model.name"


def test_client_commands(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("PYTC_URL", world.url)
    monkeypatch.setenv("PYTC_TOKEN", TOKEN)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job_doc("cli-served.zarr")))
    assert main(["submit", str(tmp_path / "job.yaml"), "--wait"]) == 0
    job_id = capsys.readouterr().out.split()[0]
    assert main(["status", job_id]) == 0 and "succeeded" in capsys.readouterr().out
    assert main(["wait", job_id, "--quiet"]) == 0
    assert main(["jobs", "--state", "succeeded"]) == 0 and job_id in capsys.readouterr().out
    assert main(["models"]) == 0 and "NAME" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(job_doc("x.zarr", input__path="missing.zarr")))
    assert main(["submit", str(tmp_path / "bad.yaml")]) == 2
    assert "input.path" in capsys.readouterr().err
    assert main(["cancel", job_id]) == 1  # already succeeded
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(job_doc("cli-big.zarr", input__path="big/em.zarr")))
    assert main(["submit", str(tmp_path / "big.yaml")]) == 0
    big_id = capsys.readouterr().out.split()[0]
    assert main(["cancel", big_id]) == 0
    assert main(["wait", big_id, "--quiet"]) == 1
    monkeypatch.setenv("PYTC_TOKEN", "wrong")
    assert main(["jobs"]) == 1 and "401" in capsys.readouterr().err
    with pytest.raises(ClientError) as caught, PytcClient(world.url, token="wrong") as client:
        client.get(job_id)
    assert caught.value.status == 401 and caught.value.problem["status"] == 401


def test_pages_of_jobs_follow_the_token(world: World) -> None:
    world.run(job_doc("paged.zarr"))
    seen: list[str] = []
    token = None
    while True:
        params = {"limit": 1, **({"page_token": token} if token else {})}
        page = world.http.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        if not (token := page["next_page_token"]):
            break
    everything = [j["id"] for j in world.http.get("/v1/jobs", params={"limit": 500}).json()["jobs"]]
    assert seen == everything and len(seen) >= 1


def test_kill_9_mid_job_resumes_from_the_done_blocks(tmp_path: Path) -> None:
    root = make_data(tmp_path / "root", shape=(16, 64, 64))  # 64 blocks
    service = make_service(root, tmp_path / "state")
    try:
        service.start()
        job_id = _post(f"{service.url}/v1/jobs", json=job_doc("killed.zarr")).json()["id"]
        markers = root / "killed.zarr" / ".pytc-run" / "pred"
        deadline = time.monotonic() + 120
        while recorded(markers, 2) < 16:
            assert time.monotonic() < deadline, service.log.read_text()[-3000:]
            time.sleep(0.05)
        service.kill9()
        p1_before, done_before = recorded(markers, 1), recorded(markers, 2)
        assert done_before < 64, "the job finished before the kill; make it longer"
        service.start()
        final = wait_for_state(service.url, job_id, FINAL)
        assert final["state"] == "succeeded", final
        assert final["result"]["blocks_skipped"] >= done_before
        tasks = final["result"]["tasks_run"]  # nothing recorded done ran again
        assert tasks["pass1"] <= 64 - p1_before and tasks["pass2"] <= 64 - done_before
        again = _post(f"{service.url}/v1/jobs", json=job_doc("uninterrupted.zarr")).json()
        assert wait_for_state(service.url, again["id"], FINAL)["state"] == "succeeded"
        np.testing.assert_array_equal(
            read_output(root / "killed.zarr"), read_output(root / "uninterrupted.zarr")
        )
    finally:
        service.stop()


def test_an_external_scheduler_is_waited_for(tmp_path: Path) -> None:
    root = make_data(tmp_path / "root")
    address = f"tcp://127.0.0.1:{free_port()}"
    service = make_service(root, tmp_path / "state", PYTC_SCHEDULER=address)
    dask: list[subprocess.Popen[bytes]] = []
    try:
        service.start(wait=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                assert_problem(httpx.get(f"{service.url}/readyz"), 503)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        log = open(tmp_path / "dask.log", "wb")  # noqa: SIM115 (kept open for the processes)
        port = address.rsplit(":", 1)[1]
        scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]
        worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--resources", "GPU=1",
                  "--host", "127.0.0.1", "--no-dashboard"]  # fmt: skip
        dask.append(subprocess.Popen(scheduler, stdout=log, stderr=log))
        dask.append(subprocess.Popen(worker, stdout=log, stderr=log, env=service.env))
        service.wait_ready()
        response = _post(f"{service.url}/v1/jobs", json=job_doc("external.zarr"), timeout=60)
        assert response.status_code == 202, response.text
        final = wait_for_state(service.url, response.json()["id"], FINAL)
        assert final["state"] == "succeeded" and final["links"]["dashboard"] is None
    finally:
        service.stop()
        for proc in reversed(dask):
            proc.terminate()
            proc.wait(30)
