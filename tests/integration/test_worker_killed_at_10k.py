"""A job of 10^4 blocks on a real cluster (a ``dask scheduler`` and two ``pytc-worker`` processes),
one worker killed with SIGKILL mid-run: the done record holds, and nothing it held done at the kill
ran again. The task log is the scheduler's own (its task stream: every task a worker finished,
with the worker's start time), not the driver's word.

The plan is 10^4 blocks (25 x 20 x 20 of 4x8x8) and the done record covers all of them; an
``input.mask`` keeps the computed ones to a corner of a few hundred, so that the test runs in
seconds: the blocks the mask empties are recorded done at start without a task, and must stay
unrun too. The output equals the blend of the kept windows computed in numpy.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from tests.integration.cluster_fixtures import pytc_run, running_cluster, wait_until
from tests.unit.workers.inference.test_mask import reference
from volumes.box import Box
from volumes.open import open_volume
from workers.confine import ChunkFiles
from workers.inference.job import WindowSpec
from workers.inference.ledger import linear, read_bits

BLOCK = (4, 8, 8)
COUNTS = (25, 20, 20)  # 10,000 blocks
SHAPE = tuple(b * n for b, n in zip(BLOCK, COUNTS, strict=True))
PATCH, STRIDE = (4, 8, 8), (2, 4, 4)
WEIGHT, BIAS = 2.0, 0.5  # the model: a 1x1x1 convolution, x -> 2x + 0.5


def make_job(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)
    group = zarr.open_group(root / "em.zarr", mode="w")
    group.create_array("raw", data=data, chunks=(20, 32, 32))
    coarse = np.zeros(COUNTS, np.uint8)  # one mask voxel per block
    coarse[:1, :5, :5] = 1  # a corner: 25 blocks, and the neighbours their windows reach (72)
    group.create_array("mask", data=coarse, chunks=COUNTS).attrs["resolution"] = [float(b) for b in BLOCK]
    group["raw"].attrs["resolution"] = [1.0, 1.0, 1.0]
    net = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(WEIGHT)
        net.bias.fill_(BIAS)
    torch.jit.script(net.eval()).save(str(root / "net.pt"))
    doc = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw", "mask": {"path": "em.zarr", "dataset": "mask"}},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": list(PATCH), "stride": list(STRIDE), "batch_size": 8},
        "output": {"path": "out.zarr", "dataset": "pred", "chunks": list(BLOCK), "pyramid": False},
        "compute": {"block_shape": list(BLOCK)},
    }
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    full = np.repeat(np.repeat(np.repeat(coarse, BLOCK[0], 0), BLOCK[1], 1), BLOCK[2], 2)
    return job, data, full


def chunk_files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every output chunk file there is, with its (inode, mtime_ns)."""
    found = {}
    for path in (root / "out.zarr" / "pred" / "0" / "c").rglob("*"):
        if path.is_file():
            info = path.stat()
            found[path] = (info.st_ino, info.st_mtime_ns)
    return found


def chunk_path(root: Path, i: int) -> Path:
    """The output chunk file of block ``i`` (chunks are blocks)."""
    files = ChunkFiles.of(open_volume(root / "out.zarr", "pred"))
    assert files is not None
    z, rest = divmod(i, COUNTS[1] * COUNTS[2])
    y, x = divmod(rest, COUNTS[2])
    (path,) = files.paths(Box((0, z * BLOCK[0], y * BLOCK[1], x * BLOCK[2]), (1, *BLOCK)))
    return path


@pytest.mark.slow
def test_a_worker_killed_at_10k_blocks_reruns_nothing_recorded_done(tmp_path: Path) -> None:
    from distributed import Client

    job, data, full = make_job(tmp_path)
    n = int(np.prod(COUNTS))
    with running_cluster(tmp_path, 2) as cluster, Client(cluster.address) as client:
        client.get_task_stream()  # the scheduler keeps its task stream from now on
        report = tmp_path / "report.json"
        proc = pytc_run(tmp_path, job, cluster.address, report)
        wait_until(lambda: len(chunk_files(tmp_path)) >= 20, timeout=300)
        pids = client.run(os.getpid)
        busy = [w for w, keys in client.processing().items() if any("-p" in str(k) for k in keys)]
        # The record just before the kill. Every record in it was written before ``read_at``, so
        # its block's task started before then: a start after ``read_at`` of a block it holds is a
        # rerun. (Read after the kill, it could hold a block whose only run began after the kill.)
        (folder,) = [f for f in (tmp_path / "out.zarr" / ".pytc-run" / "pred").iterdir() if f.is_dir()]
        p1, p2 = (bits.astype(bool) for bits in read_bits(folder, n))
        read_at = time.time()
        before = chunk_files(tmp_path)  # after the read: holds every chunk of a block recorded done
        os.kill(pids[busy[0] if busy else sorted(pids)[0]], signal.SIGKILL)  # one running a block
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        stream = client.get_task_stream()

    figures = json.loads(report.read_text())
    assert figures["blocks_total"] == n
    computed = n - figures["blocks_masked"]  # blocks with a task (pass 2 at least)
    assert 0 < computed < 100
    assert int(p2.sum()) < n, "the kill came after the job had finished"
    # The scheduler's log: every block task a worker finished, and when it started there.
    runs: dict[tuple[int, int], list[float]] = {}
    for entry in stream:
        key = str(entry["key"])
        if "-p1-" not in key and "-p2-" not in key:
            continue
        phase = 1 if "-p1-" in key else 2
        block = tuple(int(v) for v in key.rsplit("-", 1)[1].split("_"))
        begin = min(s["start"] for s in entry["startstops"] if s["action"] == "compute")
        runs.setdefault((phase, linear(block, COUNTS)), []).append(begin)
    touched = {i for phase, i in runs if phase == 2}
    assert len(touched) == computed  # every block with a task is in the log, and only those
    for (phase, i), starts in runs.items():
        recorded = p1[i] if phase == 1 else p2[i]
        assert not (recorded and max(starts) > read_at), (
            f"block {i} pass {phase} ran again after it was recorded"
        )
    # No chunk of a block recorded done was written again (the same file, the same mtime); the
    # blocks the mask left without a task (recorded done at start) have no chunk at all.
    after = chunk_files(tmp_path)
    assert set(after) == {chunk_path(tmp_path, i) for i in touched}
    done_then = [chunk_path(tmp_path, i) for i in touched if p2[i]]
    assert done_then and all(after[path] == before[path] for path in done_then)

    # The blend of the kept windows, in numpy, over the corner that holds them all (its size is a
    # whole number of strides past a window, so its grid is the job's; the rest is unwritten: 0).
    corner = (12, 56, 56)
    expected, kept, _ = reference(
        data[:12, :56, :56].astype(np.float32) / 255,
        full[:12, :56, :56],
        Box.of_shape(corner),
        WindowSpec(PATCH, STRIDE, "gaussian"),
        lambda x: WEIGHT * x + BIAS,
    )
    out = open_volume(tmp_path / "out.zarr", "pred").read(Box.of_shape((1, *corner)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert figures["windows"] == kept
