"""The run folder's scratch: one file per source block, its partial sums written compressed and
atomically, read back bit for bit by chunk, counted as the bytes they take on disk, and dropped per
output dataset when a job fails for good."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.inference.ledger import Ledger, done_count
from workers.inference.rundir import RunDir, drop_dataset_scratch


def smooth_sums(shape: tuple[int, ...]) -> np.ndarray:
    """Partial sums as pass 1 leaves them: a blended map (smooth, in [0, weight sum]) times weights."""
    grids = np.meshgrid(*(np.linspace(0, 3, n, dtype=np.float32) for n in shape[1:]), indexing="ij")
    values = 0.5 + 0.5 * np.sin(sum(grids))  # type: ignore[arg-type]
    return np.broadcast_to(values * np.exp(-grids[0]), shape).astype(np.float32)


@pytest.mark.parametrize(
    "data",
    [
        smooth_sums((2, 8, 32, 32)),
        np.random.default_rng(0).random((1, 5, 7, 9), dtype=np.float32),
        np.zeros((3, 4, 4, 4), np.float32),
        np.array(np.nan, np.float32).reshape(1, 1, 1, 1),
    ],
    ids=["smooth", "random", "zeros", "nan"],
)
def test_scratch_round_trips_bit_for_bit(tmp_path: Path, data: np.ndarray) -> None:
    run_dir = RunDir(tmp_path / "run")
    other = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    written = run_dir.write_spills((1, 1, 1), {(0, 1, 2): data, (0, 1, 3): other})
    path = run_dir.spill_path((1, 1, 1))
    assert written == path.stat().st_size  # scratch_bytes: the bytes on disk
    back = run_dir.read_spill((1, 1, 1), (0, 1, 2))
    assert back.dtype == np.float32 and back.shape == data.shape
    assert back.tobytes() == data.tobytes()
    assert run_dir.read_spill((1, 1, 1), (0, 1, 3)).tobytes() == other.tobytes()
    with pytest.raises(FileNotFoundError):
        run_dir.read_spill((1, 1, 1), (0, 0, 0))  # a chunk it holds nothing for
    with pytest.raises(FileNotFoundError):
        run_dir.read_spill((0, 0, 0), (0, 1, 2))  # a block without a file
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert run_dir.spill_blocks() == {(1, 1, 1)}


def test_scratch_takes_a_fraction_of_its_float32_bytes(tmp_path: Path) -> None:
    data = smooth_sums((2, 16, 64, 64))
    written = RunDir(tmp_path / "run").write_spills((0, 0, 0), {(0, 0, 0): data})
    assert written < 0.6 * data.nbytes, written / data.nbytes
    zeros = RunDir(tmp_path / "run").write_spills((0, 0, 1), {(0, 0, 0): np.zeros_like(data)})
    assert zeros < 0.01 * data.nbytes


def test_a_failed_jobs_scratch_is_dropped_for_its_dataset_only(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    runs = [RunDir.for_output(out, "pred", "key1"), RunDir.for_output(out, "pred", "key2")]
    other = RunDir.for_output(out, "pred2", "key1")
    for run_dir in (*runs, other):
        run_dir.write_spills((0, 0, 1), {(0, 0, 0): np.ones((1, 2, 2, 2), np.float32)})
        ledger = Ledger.open(run_dir.root, 2)
        ledger.record(1, 1)
        ledger.close()
    drop_dataset_scratch(out, "pred")
    for run_dir in runs:
        assert not (run_dir.root / "scratch").exists() and done_count(run_dir.root) == (1, 0)
    assert other.spill_path((0, 0, 1)).exists()
    drop_dataset_scratch(str(tmp_path / "never-made.zarr"), "pred")  # nothing there: nothing to do
