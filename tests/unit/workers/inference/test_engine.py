"""The engine's two passes against one in-memory pass over the whole volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import make_job, reference_blend, run_sequential
from volumes.box import Box
from workers.inference.job import WindowSpec

SHAPE = (21, 34, 37)


def position_dependent(batch: np.ndarray) -> np.ndarray:
    """A non-linear 'model' whose output depends on where a voxel sits inside its window,
    so a misplaced or double-counted window changes the blend."""
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in batch.shape[2:]], indexing="ij")
    ramp = (1.0 + z + 2 * y * x).astype(np.float32)
    first = np.sin(3.0 * batch[:, 0]) * ramp
    second = batch[:, 0] ** 2 - ramp
    return np.stack([first, second], axis=1).astype(np.float32)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    path = tmp_path / "in.zarr"
    group = zarr.open_group(path, mode="w")
    group.create_array("raw", data=data, chunks=(8, 16, 16))
    return path, data


CASES = [
    # patch, stride, pad, blending, pad_mode
    ((5, 9, 9), (3, 5, 4), (0, 0, 0), "gaussian", "reflect"),
    ((5, 9, 9), (2, 4, 4), (2, 3, 4), "bump", "reflect"),
    ((7, 8, 9), (7, 8, 9), (1, 2, 3), "constant", "replicate"),
    ((4, 10, 7), (3, 5, 5), (3, 4, 4), "gaussian", "constant"),
]
BLOCKS = [(24, 40, 40), (8, 8, 8), (16, 8, 24)]


@pytest.mark.parametrize("block_shape", BLOCKS)
@pytest.mark.parametrize(("patch", "stride", "pad", "blending", "pad_mode"), CASES)
def test_blocks_equal_one_in_memory_pass(
    volume, tmp_path, block_shape, patch, stride, pad, blending, pad_mode
):  # type: ignore[no-untyped-def]
    path, data = volume
    window = WindowSpec(patch, stride, blending, pad, pad_mode, batch_size=3)
    roi = Box((2, 3, 1), (17, 29, 33))
    job = make_job(path, tmp_path / "out.zarr", window, roi=roi, block_shape=block_shape)
    out, _ = run_sequential(job, position_dependent, 2)
    expected = reference_blend(data, roi.offset, roi.shape, window, position_dependent, 2)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("block_shape", BLOCKS)
@pytest.mark.parametrize("blending", ["gaussian", "bump", "constant"])
def test_identity_returns_the_input(volume, tmp_path, block_shape, blending):  # type: ignore[no-untyped-def]
    path, data = volume
    window = WindowSpec((5, 9, 9), (2, 4, 5), blending, (1, 2, 2), "reflect", batch_size=4)
    job = make_job(path, tmp_path / "out.zarr", window, block_shape=block_shape)
    out, _ = run_sequential(job, identity, 1)
    np.testing.assert_allclose(out[0], data, rtol=1e-5, atol=1e-6)


def test_every_window_is_computed_exactly_once(volume, tmp_path):  # type: ignore[no-untyped-def]
    path, _ = volume
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return identity(batch)

    window = WindowSpec((5, 9, 9), (2, 4, 4), "gaussian", (2, 2, 2), "reflect", batch_size=2)
    job = make_job(path, tmp_path / "out.zarr", window, block_shape=(8, 8, 8))
    _, counts = run_sequential(job, counting, 1)
    n_grid = np.prod([1 + -(-(d + 4 - w) // s) for d, w, s in zip(SHAPE, (5, 9, 9), (2, 4, 4), strict=True)])
    assert sum(calls) == counts["windows"] == n_grid
    assert counts["pass2"] > 0 and counts["scratch_bytes"] > 0


def test_single_block_needs_no_scratch(volume, tmp_path):  # type: ignore[no-untyped-def]
    path, _ = volume
    window = WindowSpec((5, 9, 9), (2, 4, 4), "gaussian")
    job = make_job(path, tmp_path / "out.zarr", window, block_shape=(24, 40, 40))
    _, counts = run_sequential(job, identity, 1)
    assert counts["scratch_bytes"] == 0 and counts["pass2"] == 0


def test_uint8_output_is_clipped_and_scaled(volume, tmp_path):  # type: ignore[no-untyped-def]
    path, data = volume
    window = WindowSpec((5, 9, 9), (2, 4, 4), "gaussian")
    job = make_job(path, tmp_path / "out.zarr", window, block_shape=(8, 16, 16), dtype="uint8")
    out, _ = run_sequential(job, lambda b: b * 2.0 - 0.5, 1)
    assert out.dtype == np.uint8
    # truncated as PyTC writes it: (clip(x, 0, 1) * 255).astype(uint8), never above the rounded level
    expected = np.clip(data * 2 - 0.5, 0, 1) * 255
    assert (out[0] <= np.rint(expected) + 0.5).all()
    np.testing.assert_allclose(out[0], np.floor(expected), atol=1)


def test_a_cancelled_block_stops_between_batches_and_records_nothing(volume, tmp_path):  # type: ignore[no-untyped-def]
    from volumes.output import create_output
    from workers.errors import BlockCancelledError
    from workers.inference.engine import BlockContext
    from workers.inference.geometry import build_geometry
    from workers.inference.pipeline import run_pass1
    from workers.inference.rundir import RunDir

    path, data = volume
    window = WindowSpec((5, 9, 9), (2, 4, 4), "gaussian", batch_size=2)
    job = make_job(path, tmp_path / "out.zarr", window, block_shape=(8, 16, 16))
    geometry = build_geometry(job, data.shape)
    output = create_output(job.output.path, "pred", "zarr3", (1, *data.shape), "float32", (8, 8, 8), None, {})
    run_dir = RunDir.for_output(job.output.path, "pred", "k")
    calls: list[int] = []

    def cancelling(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        run_dir.request_cancel()
        return identity(batch)

    with pytest.raises(BlockCancelledError):
        run_pass1(BlockContext(job, geometry, run_dir, output, 1), (0, 0, 0), cancelling)
    assert len(calls) == 1
    assert not run_dir.spill_path((0, 0, 0)).exists()  # no partial sums published
    assert not [p for p in (run_dir.root / "scratch").glob("*") if p.is_file()]  # nor left half-written
    assert not list(run_dir.root.rglob("from_*"))  # no partial sums
