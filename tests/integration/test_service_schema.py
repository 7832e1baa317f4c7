"""Schemathesis against a running ``pytc-serve``: every response of a few hundred generated requests
(valid, invalid, unknown methods, missing or wrong tokens) is no 5xx and conforms to the service's
own OpenAPI document, problem+json bodies included."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.service_fixtures import make_data, running_service

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
                "--header", f"Authorization: Bearer {TOKEN}",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        report = result.stdout + result.stderr
        assert result.returncode == 0, report[-8000:]
        generated = re.search(r"(\d+) generated", report)
        assert generated is not None and int(generated.group(1)) >= 300, report[-2000:]
        # The documented example is a real job: it ran and succeeded on the way.
        jobs = httpx.get(f"{service.url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        example = [j for j in jobs["jobs"] if j["spec"]["input"]["path"] == "data/em.zarr"]
        assert example and any(j["state"] in ("queued", "running", "succeeded") for j in example), jobs
    assert not (tmp_path / "root" / ".." / "out").exists()
