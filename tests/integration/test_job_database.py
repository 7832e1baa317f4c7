"""A real ``pytc-serve`` over a damaged job database: it refuses to start with one line naming the
file, what is wrong and what to do (exit 2, no traceback), and a database damaged while it runs
makes ``/readyz`` fail with that reason."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.database_helpers import damage_header, damage_pages, database_with_jobs
from tests.integration.service_fixtures import assert_problem, make_data, make_service, running_service


@pytest.mark.parametrize("damage", [damage_header, damage_pages], ids=["header", "pages"])
def test_start_up_on_a_damaged_database_says_what_is_wrong_and_exits_2(
    tmp_path: Path, damage: object
) -> None:
    service = make_service(tmp_path, tmp_path / "state")
    path = database_with_jobs(tmp_path / "state" / "jobs.sqlite3")
    damage(path)  # type: ignore[operator]
    ran = subprocess.run(
        [sys.executable, "-m", "service.http.serve", "--port", str(service.port)],
        env=service.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in ran.stderr + ran.stdout, ran.stderr
    assert lines[0].startswith("pytc-serve: error: ") and str(path) in lines[0]
    assert ".recover" in lines[0] and ("not a database" in lines[0] or "is damaged" in lines[0])


def test_a_database_damaged_while_the_service_runs_fails_readiness(tmp_path: Path) -> None:
    root = make_data(tmp_path / "root")
    path = database_with_jobs(tmp_path / "state" / "jobs.sqlite3")
    with running_service(root, tmp_path / "state") as service:
        assert httpx.get(f"{service.url}/readyz", timeout=10).json()["database"] == "ok"
        damage_pages(path)
        deadline = time.monotonic() + 30
        while (answer := httpx.get(f"{service.url}/readyz", timeout=30)).status_code == 200:
            assert time.monotonic() < deadline, "still ready 30 s after the damage"
            time.sleep(0.5)
        body = assert_problem(answer, 503)
        assert f"the job database {path} is damaged" in body["detail"], body
        assert httpx.get(f"{service.url}/livez", timeout=10).status_code == 200  # alive, not ready
