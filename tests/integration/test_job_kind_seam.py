"""The job-kind seam: a kind of job defined here, in the test, with no product code changed, is
registered the way an operator adds one (``PYTC_JOB_KINDS``), submitted over REST to a real
``pytc-serve`` and run by a real ``pytc run``; it runs on Dask, reports progress, and is cancelled.

``count`` writes one file per step, one Dask task per step, and resumes past the steps it finds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml

from service.documents.sections import PosInt, Section, Text, resolve_path, validate
from service.errors import JobCancelledError, SpecError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target
from service.progress import Progress

REPO = Path(__file__).resolve().parents[2]
KIND_SPEC = f"{__name__}:COUNT"


class CountDocument(Section):
    kind: Literal["count"]
    to: PosInt
    out: Text
    step_seconds: float = 0.1


@dataclass(frozen=True)
class CountJob:
    to: int
    out: str
    step_seconds: float


def count_step(out: str, step: int, seconds: float) -> int:
    time.sleep(seconds)
    Path(out, f"step-{step:04d}").write_text(str(step))
    return step


def folder_exists(path: str) -> bool:
    return Path(path).parent.is_dir()


class CountKind:
    name = "count"
    document = CountDocument

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> CountJob:
        parsed = validate(CountDocument, doc)
        return CountJob(parsed.to, str(resolve_path(parsed.out, env.roots, "out")), parsed.step_seconds)

    def target(self, job: CountJob) -> Target:
        return Target(job.out, "steps")

    def admit(self, job: CountJob, env: AdmitEnv) -> None:
        if not env.on_worker(folder_exists, job.out):
            raise SpecError("out", f"the folder of {job.out} does not exist")

    def run(self, job: CountJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        Path(job.out).mkdir(exist_ok=True)
        started = time.perf_counter()
        for step in range(job.to):
            if env.cancel.is_set():
                raise JobCancelledError(f"cancelled after {step} of {job.to} steps")
            if not Path(job.out, f"step-{step:04d}").exists():
                env.client.submit(count_step, job.out, step, job.step_seconds, pure=False).result()
            env.report(Progress(step + 1, job.to, "steps", time.perf_counter() - started))
        return {"out": job.out, "steps": job.to}

    def summary(self, result: Mapping[str, Any]) -> Summary:
        return Summary((f"counted to {result['steps']}",), result["out"])


COUNT = CountKind()


def environment(root: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTC_")},
        "PYTC_JOB_KINDS": KIND_SPEC,
        "PYTHONPATH": str(REPO),
        "PYTC_DATA_ROOTS": str(root),
        "PYTC_STATE_DIR": str(root / ".pytc"),
    }


@pytest.mark.slow
def test_a_new_kind_runs_reports_progress_and_is_cancelled_over_rest(tmp_path: Path) -> None:
    from tests.integration.service_fixtures import assert_problem, running_service, wait_for_state

    env = {"PYTC_JOB_KINDS": KIND_SPEC, "PYTHONPATH": str(REPO)}
    with running_service(tmp_path, tmp_path / "state", **env) as service:
        schema = httpx.get(f"{service.url}/openapi.json").json()["components"]["schemas"]
        assert {"$ref": "#/components/schemas/CountDocument"} in schema["JobDocument"]["anyOf"]

        bad = httpx.post(f"{service.url}/v1/jobs", json={"kind": "count", "to": 0, "out": "a"})
        assert [e["loc"] for e in assert_problem(bad, 422)["errors"]] == ["to"]

        short = httpx.post(f"{service.url}/v1/jobs", json={"kind": "count", "to": 3, "out": "short"})
        assert short.status_code == 202, short.text
        done = wait_for_state(service.url, short.json()["id"], ("succeeded", "failed"), timeout_s=120)
        assert done["state"] == "succeeded", done
        assert done["kind"] == "count" and done["result"] == {"out": str(tmp_path / "short"), "steps": 3}
        assert done["progress"]["done"] == 3 and done["progress"]["unit"] == "steps"
        assert done["summary"] == ["counted to 3"] and done["target"] == f"{tmp_path / 'short'} (steps)"
        assert sorted(p.name for p in (tmp_path / "short").iterdir()) == [f"step-000{i}" for i in range(3)]

        long = httpx.post(f"{service.url}/v1/jobs", json={"kind": "count", "to": 500, "out": "long"})
        job_id = long.json()["id"]
        again = httpx.post(f"{service.url}/v1/jobs", json={"kind": "count", "to": 5, "out": "long"})
        assert_problem(again, 409)  # the same target while the first one is active
        deadline = time.monotonic() + 60
        while (progress := httpx.get(f"{service.url}/v1/jobs/{job_id}").json()["progress"])["done"] < 3:
            assert time.monotonic() < deadline, progress
            time.sleep(0.1)
        assert progress["total"] == 500 and 0 < progress["fraction"] < 1
        assert httpx.post(f"{service.url}/v1/jobs/{job_id}/cancel").status_code == 202
        ended = wait_for_state(service.url, job_id, ("cancelled", "succeeded", "failed"), timeout_s=60)
        assert ended["state"] == "cancelled", ended
        assert 3 <= len(list((tmp_path / "long").iterdir())) < 500


@pytest.mark.slow
def test_a_new_kind_runs_and_is_cancelled_through_pytc_run(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service.cli", "run"]
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"kind": "count", "to": 3, "out": "short"}))
    short = subprocess.run(
        [*command, "short.yaml"],
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert short.returncode == 0, short.stderr
    assert short.stdout.strip() == str(tmp_path / "short")
    assert "steps 3/3 (100.0%)" in short.stderr and "counted to 3" in short.stderr

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"kind": "count", "to": 2, "out": "no/such/folder/x"}))
    bad = subprocess.run(
        [*command, "bad.yaml"],
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error: out: the folder of" in bad.stderr, bad.stderr

    (tmp_path / "long.yaml").write_text(yaml.safe_dump({"kind": "count", "to": 500, "out": "long"}))
    proc = subprocess.Popen(
        [*command, "long.yaml"], cwd=tmp_path, env=environment(tmp_path), stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        seen = ""
        while "/500" not in seen:  # not a terminal: the first report is a line of its own
            line = proc.stderr.readline()
            assert line, f"pytc run ended early: {seen}"
            seen += line
        assert "steps 1/500 (0.2%)" in seen, seen
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "long").iterdir())) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert 2 <= len(list((tmp_path / "long").iterdir())) < 500
