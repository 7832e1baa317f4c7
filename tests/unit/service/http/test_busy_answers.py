"""A service that cannot check a job now answers 503 with Retry-After, and says which wait it is: no
Dask worker answered (``dask-unavailable``), or every model-check slot is taken
(``model-checks-busy``: the workers are there, the job may be fine). The app's own handlers."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.errors import ProbesBusyError, SchedulerUnavailableError
from service.http.app import create_app
from service.jobs.submission import ProbeGate
from service.settings import Settings


def test_busy_model_checks_and_a_missing_cluster_are_told_apart(tmp_path: Path) -> None:
    app = create_app(Settings(data_roots=[tmp_path], state_dir=tmp_path / "state"))
    gate = ProbeGate(1, 0.05)

    @app.get("/test/probe")
    def probe() -> None:
        with gate.slot(), gate.slot():  # the second finds the only slot taken
            pass

    @app.get("/test/cluster")
    def cluster() -> None:
        raise SchedulerUnavailableError("cannot connect to the Dask scheduler tcp://127.0.0.1:1")

    client = TestClient(app, base_url="http://127.0.0.1:8000")
    busy, gone = client.get("/test/probe"), client.get("/test/cluster")
    assert busy.status_code == gone.status_code == 503
    assert busy.headers["retry-after"] and gone.headers["retry-after"]
    assert busy.json()["type"] == "urn:pytc:problem:model-checks-busy"
    assert "PYTC_MODEL_PROBES" in busy.json()["detail"]
    assert gone.json()["type"] == "urn:pytc:problem:dask-unavailable"
    assert issubclass(ProbesBusyError, SchedulerUnavailableError)  # clients that know 503s keep working
