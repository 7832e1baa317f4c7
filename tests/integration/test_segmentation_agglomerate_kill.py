"""A multi-threshold ``affinity_agglomerate`` job through the REST service, resumed after ``kill -9``
of the service in the middle of its write stage (some blocks of every threshold's image written and
recorded, others not): the restarted service, on the same SQLite state, resumes the job and finishes
it, no block recorded written before the kill is written again, and every file of the output (each
threshold's labels at every pyramid level, its table of objects, its OME metadata and the group's
``labels`` list) equals a clean run's byte for byte."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr

from service.documents.segmentation import parse_segmentation
from tests.integration.service_fixtures import make_service, wait_for_state
from volumes.synth import affinities_from_labels, generate_em_volume
from workers.inference.ledger import read_bits
from workers.segmentation.run import run_serially
from workers.segmentation.rundir import SLOTS
from workers.segmentation.steps import WRITE

pytestmark = pytest.mark.slow

SHAPE, BLOCK = (16, 64, 64), [4, 16, 16]  # 64 blocks; each write step writes the three images' chunks
COUNTS = tuple(s // b for s, b in zip(SHAPE, BLOCK, strict=True))
N_BLOCKS = int(np.prod(COUNTS))
THRESHOLDS = [0.1, 0.3, 0.6]
FINAL = ("succeeded", "failed", "cancelled")


def make_input(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cells = generate_em_volume(SHAPE, seed=5, cell_size_nm=300.0).cells
    aff = affinities_from_labels(cells, seed=5)
    zarr.open_group(root / "pred.zarr", mode="w").create_array("aff", data=aff, chunks=(3, *BLOCK))


def doc(output: str) -> dict[str, Any]:
    return {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": "aff"},
        "decoder": {"name": "affinity_agglomerate", "thresholds": THRESHOLDS, "merge_function": "mean"},
        "output": {"path": output, "dataset": "cells", "chunks": BLOCK},
        "compute": {"block_shape": BLOCK},
    }


def written(output: Path) -> set[int]:
    """The blocks (linear indices) whose write step the run's done record holds."""
    folders = list(output.glob(".pytc-run/cells/*/done"))
    if not folders:
        return set()
    [folder] = folders
    p1, _ = read_bits(folder, len(SLOTS) * N_BLOCKS)
    start = SLOTS[WRITE] * N_BLOCKS
    return {int(i) for i in np.flatnonzero(p1[start : start + N_BLOCKS])}


def chunk_files(output: Path, block: int) -> list[Path]:
    """Level 0's chunk of ``block`` in every threshold's image (the chunks are the blocks)."""
    z, rest = divmod(block, COUNTS[1] * COUNTS[2])
    y, x = divmod(rest, COUNTS[2])
    return [output / "cells" / f"threshold_{t:g}" / "0" / "c" / str(z) / str(y) / str(x) for t in THRESHOLDS]


def files(output: Path) -> dict[str, bytes]:
    """Every file of the output but the run folder, by its path inside it."""
    return {
        str(p.relative_to(output)): p.read_bytes()
        for p in sorted(output.rglob("*"))
        if p.is_file() and ".pytc-run" not in p.parts
    }


def test_a_multi_threshold_job_killed_mid_write_resumes_to_a_clean_runs_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_input(root)
    service = make_service(root, tmp_path / "state")
    try:
        service.start()
        job_id = httpx.post(f"{service.url}/v1/jobs", json=doc("killed.zarr"), timeout=60).json()["id"]
        out = root / "killed.zarr"
        watched = httpx.get(f"{service.url}/v1/jobs/{job_id}", timeout=30).json()
        assert watched["state"] in ("queued", "running"), watched
        deadline = time.monotonic() + 300
        # the done record, read just before the kill (no request to the busy service in this loop:
        # a slow answer could let the write stage finish before the kill)
        while len(before := written(out)) < 4:
            assert time.monotonic() < deadline and service.proc is not None and service.proc.poll() is None, (
                service.log.read_text()[-3000:]
            )
            time.sleep(0.02)
        stamps = {p: p.stat().st_mtime_ns for b in before for p in chunk_files(out, b) if p.exists()}
        service.kill9()
        at_kill = written(out)
        assert before <= at_kill and len(at_kill) < N_BLOCKS, (
            f"the kill came at {len(at_kill)} blocks written"
        )
        assert len(stamps) == len(before) * len(THRESHOLDS)  # every image's chunk of every written block
        group = json.loads((out / "cells" / "zarr.json").read_text())["attributes"]
        assert not group["pytc"]["complete"] and not list((out / "cells").glob("*.objects.csv"))

        service.start()  # the same SQLite state: the job resumes
        final = wait_for_state(service.url, job_id, FINAL)
        assert final["state"] == "succeeded", (final, service.log.read_text()[-3000:])
        result = final["result"]
        rewritten = [str(p) for p, ns in stamps.items() if p.stat().st_mtime_ns != ns]
        assert not rewritten, f"blocks recorded written before the kill were written again: {rewritten[:3]}"
        assert result["resumed"] and result["steps_skipped"] >= 3 * N_BLOCKS + 2 + len(at_kill), result
        print(
            f"killed at {len(at_kill)} of {N_BLOCKS} blocks written, {result['steps_skipped']} steps skipped"
        )
        parts = final["progress"]["parts"]  # the steps, each stage's counted
        assert parts["write"] == [N_BLOCKS, N_BLOCKS] and parts["agglomerate"] == [1, 1], parts
        assert final["progress"]["done"] == final["progress"]["total"] == sum(t for _, t in parts.values())
        assert [i["dataset"] for i in result["images"]] == [f"cells/threshold_{t:g}" for t in THRESHOLDS]
    finally:
        service.stop()

    run_serially(parse_segmentation(doc("clean.zarr"), [root]))  # the clean run, in one process
    mine, clean = files(root / "killed.zarr"), files(root / "clean.zarr")
    assert sorted(mine) == sorted(clean)
    assert sum(1 for name in mine if name.endswith(".objects.csv")) == len(THRESHOLDS)
    for name, data in clean.items():
        if name.endswith("zarr.json"):  # the job's record names its own output path
            data = data.replace(b'"path": "clean.zarr"', b'"path": "killed.zarr"')
        assert mine[name] == data, name
    attrs = json.loads(mine["cells/zarr.json"])["attributes"]
    assert attrs["ome"]["labels"] == [f"threshold_{t:g}" for t in THRESHOLDS] and attrs["pytc"]["complete"]
    for t in THRESHOLDS:
        image = json.loads(mine[f"cells/threshold_{t:g}/zarr.json"])["attributes"]["ome"]
        assert "image-label" in image and len(image["multiscales"][0]["datasets"]) == 3
