"""The run folder's scratch: partial sums written compressed and atomically, read back bit for bit,
counted as the bytes they take on disk, and dropped per output dataset when a job fails for good."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    written = run_dir.write_scratch((0, 1, 2), (1, 1, 1), data)
    path = run_dir.scratch_path((0, 1, 2), (1, 1, 1))
    assert written == path.stat().st_size  # scratch_bytes: the bytes on disk
    back = run_dir.read_scratch((0, 1, 2), (1, 1, 1))
    assert back.dtype == np.float32 and back.shape == data.shape
    assert back.tobytes() == data.tobytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_scratch_takes_a_fraction_of_its_float32_bytes(tmp_path: Path) -> None:
    data = smooth_sums((2, 16, 64, 64))
    written = RunDir(tmp_path / "run").write_scratch((0, 0, 0), (0, 0, 0), data)
    assert written < 0.6 * data.nbytes, written / data.nbytes
    zeros = RunDir(tmp_path / "run").write_scratch((0, 0, 1), (0, 0, 0), np.zeros_like(data))
    assert zeros < 0.01 * data.nbytes


def test_a_failed_jobs_scratch_is_dropped_for_its_dataset_only(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    runs = [RunDir.for_output(out, "pred", "key1"), RunDir.for_output(out, "pred", "key2")]
    other = RunDir.for_output(out, "pred2", "key1")
    for run_dir in (*runs, other):
        run_dir.write_scratch((0, 0, 0), (0, 0, 1), np.ones((1, 2, 2, 2), np.float32))
        run_dir.mark_done(1, (0, 0, 1), {"windows": 1})
    drop_dataset_scratch(out, "pred")
    for run_dir in runs:
        assert not (run_dir.root / "scratch").exists() and run_dir.is_done(1, (0, 0, 1))
    assert other.scratch_path((0, 0, 0), (0, 0, 1)).exists()
    drop_dataset_scratch(str(tmp_path / "never-made.zarr"), "pred")  # nothing there: nothing to do
