"""Schemathesis against a running ``pytc-serve``: every response of a few hundred generated requests
(valid, invalid, unknown methods, missing or wrong tokens) is no 5xx and conforms to the service's
own OpenAPI document, problem+json bodies included."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from service.http.routes import EXAMPLE_JOB
from tests.integration.service_fixtures import make_data, running_service, wait_for_state

TOKEN = "schema-token"
BIN = Path(sys.executable).parent


def test_every_response_conforms_to_the_openapi_document(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_data(root / "data")  # the document's example job names data/em.zarr and models/net.pt
    (root / "models").mkdir()
    (root / "data" / "net.pt").rename(root / "models" / "net.pt")
    with running_service(root, tmp_path / "state", PYTC_API_TOKENS=TOKEN) as service:
        result = subprocess.run(
            [
                str(BIN / "schemathesis"), "run", f"{service.url}/openapi.json",
                "--checks", "all",
                # A job that fits the schema can still name files that do not exist: refusing it
                # (422) is right, so "schema-valid implies accepted" does not hold for this API.
                "--exclude-checks", "positive_data_acceptance",
                "--max-examples", "40", "--seed", "7", "--workers", "1",
                "--generation-database", "none", "--request-timeout", "30", "--no-color",
                # Admitting a job checks its model in a fresh child process of a worker (torch's
                # import included): seconds on a quiet machine, more on a busy 2-core CI box.
                "--max-response-time", "30",
                "--header", f"Authorization: Bearer {TOKEN}",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        report = result.stdout + result.stderr
        assert result.returncode == 0, report[-8000:]
        generated = re.search(r"(\d+) generated", report)
        assert generated is not None and int(generated.group(1)) >= 300, report[-2000:]
        # The documented example is a real job: accepted and run. (Schemathesis's stateful phase
        # may have deleted the one it posted, DELETE /v1/jobs/{id}; post it once more.)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{service.url}/v1/jobs", json=EXAMPLE_JOB, headers=headers, timeout=60)
        assert answer.status_code == 202, answer.text
        job = wait_for_state(service.url, answer.json()["id"], ("succeeded",), headers)
        assert job["spec"]["input"]["path"] == "data/em.zarr", job
    assert not (tmp_path / "root" / ".." / "out").exists()
