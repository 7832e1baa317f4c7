"""``pytc run`` of a segmentation job with its one embedded worker: ``--threads`` steps at once, in
processes forked from it (:class:`service.kinds.pool.ProcessPool`, Linux) or on threads of it
(:class:`service.kinds.pool.ThreadPool`: ``--threads 1``, ``PYTC_FORK_TASKS=0``), Dask is never
imported, and a run killed with ``kill -9`` part way resumes, from its done record, to the labels of
a clean run (the whole-volume decoder's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from volumes.labels.decoders import Decoder
from volumes.labels.whole import decode_in_memory, sequential

REPO = Path(__file__).resolve().parents[2]
DECODER = Decoder("bc_connected", (0.55, 0.6), 16, "background", 26, (1, 3, 3))

# `pytc run` in a process that says afterwards whether Dask was imported
RUN = """
import json, sys
from service.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "distributed": "distributed" in sys.modules}))
"""


def write_job(root: Path, shape: tuple[int, int, int], block: list[int]) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(11).random((2, *shape)), (0, 1, 2, 2))
    pred = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
    zarr.open_group(root / "pred.zarr", mode="w").create_array("p", data=pred, chunks=(2, *block))
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": "p"},
        "decoder": {"name": "bc_connected", "thres1": 0.55, "thres2": 0.6, "thres_small": 16,
                    "dilation_struct": [1, 3, 3]},
        "output": {"path": "seg.zarr", "dataset": "seg", "chunks": block},
        "compute": {"block_shape": block},
    }  # fmt: skip
    (root / "seg.yaml").write_text(yaml.safe_dump(doc))
    return pred


def pytc(root: Path, *extra: str, fork: bool = True) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", RUN, "run", "seg.yaml", "--data-root", str(root), "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTC_FORK_TASKS": "1" if fork else "0"}
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    said: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    assert said["code"] == 0, err[-2000:]
    return said


def labels(root: Path) -> np.ndarray:
    return zarr.open_array(root / "seg.zarr" / "seg" / "0", mode="r")[:]


def test_one_worker_runs_its_steps_in_process_without_dask(tmp_path: Path) -> None:
    pred = write_job(tmp_path, (12, 40, 44), [6, 16, 16])
    said = finished(pytc(tmp_path, "--report", "report.json"))
    assert said["distributed"] is False
    np.testing.assert_array_equal(labels(tmp_path), sequential(decode_in_memory(pred, DECODER)))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["blocks_total"] == 2 * 3 * 3 and report["levels"] >= 2  # with its pyramid


@pytest.mark.parametrize(("threads", "fork"), [("1", True), ("3", True), ("3", False)])
def test_the_one_worker_on_several_threads_gives_the_same_labels(
    tmp_path: Path, threads: str, fork: bool
) -> None:
    """``--threads N``: N steps at once (18 blocks, five steps each, a dilation reading its
    neighbours' numbered labels), in forked processes or on threads of the process, still the
    whole-volume decoder's labels."""
    pred = write_job(tmp_path, (12, 40, 44), [6, 16, 16])
    said = finished(pytc(tmp_path, "--threads", threads, fork=fork))
    assert said["distributed"] is False
    np.testing.assert_array_equal(labels(tmp_path), sequential(decode_in_memory(pred, DECODER)))


def test_threads_go_with_the_one_embedded_worker_only(tmp_path: Path) -> None:
    write_job(tmp_path, (12, 40, 44), [6, 16, 16])
    proc = pytc(tmp_path, "--threads", "2", "--workers", "2")
    out, err = proc.communicate(timeout=120)
    assert json.loads(out.strip().splitlines()[-1])["code"] == 2, err[-2000:]
    assert "error: --threads:" in err and "Traceback" not in err
    assert not (tmp_path / "seg.zarr").exists()


@pytest.mark.slow
def test_a_run_killed_part_way_resumes_to_the_clean_runs_labels(tmp_path: Path) -> None:
    pred = write_job(tmp_path, (32, 160, 160), [8, 32, 32])  # 100 blocks, 5 steps each
    proc = pytc(tmp_path)
    deadline = time.monotonic() + 120
    log: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        log = [
            p for p in (tmp_path / "seg.zarr").glob(".pytc-run/*/*/done/done.log") if p.stat().st_size > 64
        ]
        if log:
            break
        time.sleep(0.005)
    assert log and proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (tmp_path / "seg.zarr" / "seg").exists() or not _complete(tmp_path)

    said = finished(pytc(tmp_path, "--report", "report.json"))
    assert said["distributed"] is False
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed"] is True and report["steps_skipped"] > 0
    np.testing.assert_array_equal(labels(tmp_path), sequential(decode_in_memory(pred, DECODER)))
    assert _complete(tmp_path)
    assert not (tmp_path / "seg.zarr" / ".pytc-run").exists() or not any(
        (tmp_path / "seg.zarr" / ".pytc-run").rglob("done.log")
    )


def _complete(root: Path) -> bool:
    attrs = zarr.open_array(root / "seg.zarr" / "seg" / "0", mode="r").attrs.asdict()
    return bool(attrs.get("pytc", {}).get("complete"))
