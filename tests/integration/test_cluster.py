"""Jobs on a real cluster: a ``dask scheduler`` and ``pytc-worker`` processes on 127.0.0.1.

Faults are real: kill -9 of a worker process, kill -9 of the process driving the job, a corrupt
input chunk, a cancel. Every output is compared with a clean embedded run's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.integration.cluster_fixtures import (
    done_blocks,
    make_data,
    pytc_run,
    running_cluster,
    wait_until,
    write_job,
)
from volumes.box import Box
from volumes.open import open_volume
from workers.runtime.busy import running_keys

N_BLOCKS = 4 * 3 * 3


def read(path: Path) -> np.ndarray:
    volume = open_volume(path, "pred")
    return volume.read(Box.of_shape(volume.shape))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The embedded single-process run every cluster run must equal."""
    root = tmp_path_factory.mktemp("clean")
    make_data(root)
    proc = pytc_run(root, write_job(root), None)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return root, read(root / "out.zarr")


def finish(proc, timeout: float = 600) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode()


def test_two_workers_equal_the_embedded_run(tmp_path: Path, clean) -> None:  # type: ignore[no-untyped-def]
    make_data(tmp_path)
    with running_cluster(tmp_path, 2) as cluster:
        code, err = finish(pytc_run(tmp_path, write_job(tmp_path), cluster.address))
    assert code == 0, err
    np.testing.assert_allclose(read(tmp_path / "out.zarr"), clean[1], rtol=1e-6, atol=1e-7)
    assert open_volume(tmp_path / "out.zarr", "pred").attrs["pytc"]["complete"] is True


def test_kill_9_of_a_worker_mid_job(tmp_path: Path, clean) -> None:  # type: ignore[no-untyped-def]
    from distributed import Client

    make_data(tmp_path)
    with running_cluster(tmp_path, 2) as cluster:
        proc = pytc_run(tmp_path, write_job(tmp_path), cluster.address)
        wait_until(lambda: done_blocks(tmp_path / "out.zarr") >= 4)
        with Client(cluster.address) as client:
            pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = done_blocks(tmp_path / "out.zarr")
        code, err = finish(proc)
    assert code == 0, err
    assert done_at_kill < N_BLOCKS, "the kill came after the job had finished"
    np.testing.assert_allclose(read(tmp_path / "out.zarr"), clean[1], rtol=1e-6, atol=1e-7)


def test_driver_killed_and_restarted_resumes_without_recomputing(tmp_path: Path, clean) -> None:  # type: ignore[no-untyped-def]
    make_data(tmp_path)
    job = write_job(tmp_path)
    with running_cluster(tmp_path, 1) as cluster:
        proc = pytc_run(tmp_path, job, cluster.address)
        wait_until(lambda: done_blocks(tmp_path / "out.zarr") >= 6)
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait()
        p1_before, before = done_blocks(tmp_path / "out.zarr", 1), done_blocks(tmp_path / "out.zarr")
        assert 0 < before < N_BLOCKS
        report = tmp_path / "report.json"
        code, err = finish(pytc_run(tmp_path, job, cluster.address, report))
    assert code == 0, err
    figures = json.loads(report.read_text())
    assert figures["blocks_skipped"] >= before
    # nothing recorded done ran again: neither a recorded pass 1 nor a finished block's pass 2
    assert figures["tasks_run"]["pass1"] <= N_BLOCKS - p1_before, "a recorded pass 1 ran again"
    assert figures["tasks_run"]["pass2"] <= N_BLOCKS - before, "a finished block ran again"
    np.testing.assert_allclose(read(tmp_path / "out.zarr"), clean[1], rtol=1e-6, atol=1e-7)


def test_a_block_that_always_fails_fails_the_job(tmp_path: Path) -> None:
    make_data(tmp_path)
    chunk = next(
        p
        for p in (tmp_path / "em.zarr" / "raw").rglob("*")
        if p.is_file() and p.name != "zarr.json" and p.parts[-4:-1] == ("c", "1", "1")
    )
    chunk.write_bytes(b"this is not a zstd frame")
    with running_cluster(tmp_path, 1) as cluster:
        code, err = finish(pytc_run(tmp_path, write_job(tmp_path), cluster.address))
    assert code == 1
    assert "failed" in err and "block (" in err
    assert open_volume(tmp_path / "out.zarr", "pred").attrs["pytc"]["complete"] is False


def test_cancel_mid_job_leaves_no_task_running(tmp_path: Path) -> None:
    from distributed import Client

    make_data(tmp_path)
    with running_cluster(tmp_path, 2) as cluster:
        proc = pytc_run(tmp_path, write_job(tmp_path), cluster.address)
        wait_until(lambda: done_blocks(tmp_path / "out.zarr") >= 2)
        proc.send_signal(signal.SIGINT)
        code, err = finish(proc, timeout=120)
        assert code != 0 and "interrupted" in err
        with Client(cluster.address) as client:
            # pytc run ended only once no worker ran a block of the job, cancelled ones included
            # (the scheduler forgets those at once, while their threads go on writing)
            assert not any(client.run(running_keys, ("pytc-",)).values())
            wait_until(lambda: not any(client.processing().values()), timeout=30)
            assert not any(client.processing().values())
    assert done_blocks(tmp_path / "out.zarr") < N_BLOCKS
    assert open_volume(tmp_path / "out.zarr", "pred").attrs["pytc"]["complete"] is False
