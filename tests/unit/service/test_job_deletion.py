"""Deleting a job through the job manager: a finished job is forgotten and the partial sums it kept
for a resume are dropped, unless a newer job wrote the same output since (they are that job's now);
an active job is refused. Real job documents over real data, the in-memory store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from service.errors import JobActiveError, JobNotFoundError
from service.http.events import ChangeFeed
from service.http.metrics import ServiceMetrics
from service.jobs.connection import DaskConnection
from service.jobs.manager import JobManager, ManagerConfig
from service.kinds.inference import INFERENCE
from service.store.jobs import NewJob
from service.store.memory import MemoryJobStore, MemoryModelRegistry
from workers.inference.rundir import RunDir

DOC = {
    "kind": "inference",
    "input": {"path": "em.zarr", "dataset": "raw"},
    "model": {"torchscript": "net.pt"},
    "window": {"patch_size": [5, 17, 17], "stride": [2, 8, 8]},
    "output": {"path": "out.zarr", "dataset": "pred", "chunks": [4, 16, 16]},
}


@pytest.fixture
def manager(tmp_path: Path) -> JobManager:
    # What parsing the document looks at: the input array, and a model file where it names one.
    zarr.open_group(tmp_path / "em.zarr", mode="w").create_array("raw", shape=(12, 40, 40), dtype="uint8")
    (tmp_path / "net.pt").write_bytes(b"")
    connection = DaskConnection(None)  # never started: deleting needs no worker
    config = ManagerConfig((tmp_path,))
    return JobManager(
        MemoryJobStore(), MemoryModelRegistry(), connection, config, ChangeFeed(), ServiceMetrics()
    )


def ended(manager: JobManager, job_id: str, state: str) -> None:
    key = INFERENCE.target(INFERENCE.parse(DOC, manager.parse_env)).key
    manager.store.create_job(NewJob(job_id, "inference", DOC, output_key=key))
    assert manager.store.claim_next() is not None
    if state != "running":
        manager.store.finish_job(job_id, state, error={"title": state, "detail": "-"})  # type: ignore[arg-type]


def test_deleting_drops_the_sums_only_of_the_newest_job_of_an_output(
    manager: JobManager, tmp_path: Path
) -> None:
    run_dir = RunDir.for_output(str(tmp_path / "out.zarr"), "pred", "layout")
    run_dir.write_spills((0, 0, 1), {(0, 0, 0): np.ones((2, 4, 4, 4), np.float32)})
    ended(manager, "old", "failed")
    ended(manager, "new", "cancelled")  # resubmitted, then cancelled: it resumes from those sums
    assert manager.delete("old").id == "old"
    assert run_dir.spill_path((0, 0, 1)).exists()
    with pytest.raises(JobNotFoundError):
        manager.store.get_job("old")
    manager.delete("new")
    assert not run_dir.spill_path((0, 0, 1)).exists()


def test_an_active_job_is_not_deleted(manager: JobManager) -> None:
    ended(manager, "running", "running")
    with pytest.raises(JobActiveError, match="cancel it"):
        manager.delete("running")
    assert manager.store.get_job("running").state == "running"
