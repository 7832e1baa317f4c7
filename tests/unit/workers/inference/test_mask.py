"""Mask-restricted inference (``input.mask``) against an in-memory reference over the kept windows.

The reference here is independent of the engine: every window of PyTC's grid is looked at one by
one, kept iff the mask (upsampled to the input's scale with ``np.repeat``) has a nonzero voxel in
its footprint, and only the kept windows are blended; voxels no kept window covers are 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ref import ModelInfo
from tests.helpers import NP_PAD, make_job, pytc_starts
from volumes.blending import blend_weights
from volumes.box import Box
from volumes.open import open_volume
from workers.errors import SpecError
from workers.inference.job import InferenceJob, MaskSpec, WindowSpec
from workers.inference.mask import keep_from_mask, scale_factors
from workers.inference.run import InferenceRun, pyramid_serially
from workers.inference.tasks import run_block

SHAPE = (20, 32, 32)


def model(batch: np.ndarray) -> np.ndarray:
    """Non-linear and position dependent: a misplaced or missing window changes the blend."""
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in batch.shape[2:]], indexing="ij")
    return (np.sin(3.0 * batch) * (1.0 + z + 2 * y * x)).astype(np.float32)


def write(path: Path, name: str, data: np.ndarray, resolution: list[float] | None = None) -> None:
    array = zarr.open_group(path, mode="a").create_array(
        name, data=data, chunks=tuple(min(8, n) for n in data.shape), overwrite=True
    )
    if resolution is not None:
        array.attrs["resolution"] = resolution


def sparse_mask(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(n // 5, n // 5 + max(1, n // 8)) for n in shape)] = 3  # one small blob
    mask[-1, -1, -1] = 1  # one voxel in the far corner
    return mask


def reference(
    data: np.ndarray,
    full_mask: np.ndarray,
    roi: Box,
    window: WindowSpec,
    predict: Callable[[np.ndarray], np.ndarray] = model,
    channels: int = 1,
) -> tuple[np.ndarray, int, int]:
    """The blend of the kept windows only (0 where none covers; channels first), the kept and the
    total windows."""
    pad, patch = window.pad_size, window.patch_size
    margin = 32
    padded = np.pad(data, margin, mode=NP_PAD[window.pad_mode])  # type: ignore[call-overload]
    begin = [o - p for o, p in zip(roi.offset, pad, strict=True)]  # the grid's origin, input space
    grown = [n + 2 * p for n, p in zip(roi.shape, pad, strict=True)]
    weights = blend_weights(patch, window.blending)
    num = np.zeros((channels, *grown), np.float64)
    den = np.zeros(grown, np.float64)
    kept = total = 0
    axes = [pytc_starts(d, w, s) for d, w, s in zip(grown, patch, window.stride, strict=True)]
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                total += 1
                lo = [max(b + s, 0) for b, s in zip(begin, (z, y, x), strict=True)]
                hi = [
                    min(b + s + w, d) for b, s, w, d in zip(begin, (z, y, x), patch, data.shape, strict=True)
                ]
                if not full_mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].any():
                    continue
                kept += 1
                src = tuple(
                    slice(b + s + margin, b + s + w + margin)
                    for b, s, w in zip(begin, (z, y, x), patch, strict=True)
                )
                pred = predict(padded[src][None, None].astype(np.float32))[0]
                tgt = tuple(slice(s, s + w) for s, w in zip((z, y, x), patch, strict=True))
                num[(slice(None), *tgt)] += pred * weights
                den[tgt] += weights
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    crop = tuple(slice(p, p + n) for p, n in zip(pad, roi.shape, strict=True))
    return out[(slice(None), *crop)].astype(np.float32), kept, total


def run_tasks(
    job: InferenceJob, stop_after: int | None = None
) -> tuple[InferenceRun, list[tuple[int, tuple[int, ...]]]]:
    """The run's loop in this process, recording every task handed out; ``stop_after`` tasks, the
    run is abandoned as a killed driver would (nothing completed)."""
    info = ModelInfo(1, 1, "mask-test")
    run = InferenceRun.start(job, info)
    tasks = []
    while (task := run.next_task()) is not None:
        if stop_after is not None and len(tasks) == stop_after:
            run.close()
            return run, tasks
        tasks.append((task.phase, task.block))
        run.finished(task, run_block(task, predict=model))
    pyramid_serially(run)  # the output's coarser levels (an empty stage where it has none)
    run.complete()
    return run, tasks


def read_output(job: InferenceJob) -> np.ndarray:
    volume = open_volume(job.output.path, job.output.dataset)
    return np.asarray(volume.read(Box.of_shape(volume.shape)))


def masked_job(
    tmp_path: Path, mask: np.ndarray, mask_res: list[float] | None, **kwargs
) -> tuple[InferenceJob, np.ndarray]:  # type: ignore[no-untyped-def]
    data = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    write(tmp_path / "in.zarr", "raw", data, [1.0, 1.0, 1.0] if mask_res else None)
    write(tmp_path / "in.zarr", "mask", mask, mask_res)
    window = kwargs.pop("window", WindowSpec((5, 7, 7), (3, 5, 5), "gaussian", batch_size=3))
    job = make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=(8, 8, 8), **kwargs)
    job = replace(job, input=replace(job.input, mask=MaskSpec(str(tmp_path / "in.zarr"), "mask")))
    return job, data


@pytest.mark.parametrize(
    ("factors", "roi", "pad"),
    [
        ((1, 1, 1), None, (0, 0, 0)),
        ((2, 4, 4), None, (0, 0, 0)),  # a coarser mask with its own voxel size
        ((4, 8, 8), Box((2, 3, 1), (17, 27, 30)), (2, 3, 4)),  # a ROI, padding, a ragged last mask voxel
    ],
)
def test_masked_run_equals_the_kept_windows_alone(tmp_path, factors, roi, pad):  # type: ignore[no-untyped-def]
    coarse = tuple(-(-n // f) for n, f in zip(SHAPE, factors, strict=True))
    mask = sparse_mask(coarse)
    window = WindowSpec((5, 7, 7), (3, 5, 5), "gaussian", pad, "reflect", batch_size=3)
    res = [float(f) for f in factors] if factors != (1, 1, 1) else None
    job, data = masked_job(tmp_path, mask, res, window=window, roi=roi)
    roi = roi or Box.of_shape(SHAPE)
    full = mask
    for axis, f in enumerate(factors):
        full = np.repeat(full, f, axis=axis)
    full = full[tuple(slice(0, n) for n in SHAPE)]
    expected, kept, total = reference(data, full, roi, window)
    assert 0 < kept < total

    run, tasks = run_tasks(job)
    out = read_output(job)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)
    # voxels no kept window covers hold the fill value, 0; the others a prediction (never 0 here)
    assert (out == 0).any() and np.array_equal(out == 0, expected == 0)
    summary = run.summary
    assert summary.windows == kept  # each kept window computed once, no other
    assert summary.windows_masked == total - kept
    # every block with something to compute got its task; the blocks the schedule left out had none
    plan, geometry = run.plan, run.geometry
    assert geometry.mask is not None
    exact = geometry.mask.keep([range(n) for n in plan.grid.counts])  # the whole grid: the test's view
    assert int(exact.sum()) == kept
    touched = {
        b for b in plan.blocks() if np.any(expected[(slice(None), *plan.write_box(b).slices())] != 0)
    }  # a kept window reaches it (the model's output is never exactly 0 there)
    ran = {b for _, b in tasks}
    assert touched <= ran
    assert summary.blocks_masked == plan.n_blocks - len(ran) > 0
    owners = {b for b in plan.blocks() if any(exact[w] for w in plan.windows(b))}
    assert owners <= {b for phase, b in tasks if phase == 1}


def test_the_mask_is_read_a_chunk_or_a_footprint_at_a_time(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Neither the planner's pass nor a task holds the whole mask: every read is a mask chunk (the
    streaming "any" pass) or a block's footprint, and the output is still exact."""
    from workers.inference import mask as mask_module

    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 3:9, 20:26] = 1
    job, data = masked_job(tmp_path, mask, None)
    reads: list[tuple[int, ...]] = []
    opened = mask_module.open_mask

    def recording(job: InferenceJob):  # type: ignore[no-untyped-def]
        volume = opened(job)
        read = volume.read
        volume.read = lambda box: (reads.append(box.shape), read(box))[1]  # type: ignore[method-assign]
        return volume

    monkeypatch.setattr(mask_module, "open_mask", recording)
    expected, kept, _ = reference(data, mask, Box.of_shape(SHAPE), job.window)
    run, _ = run_tasks(job)
    np.testing.assert_allclose(read_output(job), expected, rtol=2e-5, atol=2e-6)
    assert run.summary.windows == kept and reads
    whole = int(np.prod(SHAPE))
    assert max(int(np.prod(r)) for r in reads) <= whole // 4, sorted(reads)[-3:]
    assert (8, 8, 8) in reads  # the planner's pass: one mask chunk at a time


def test_a_resumed_masked_run_is_still_exact(tmp_path):  # type: ignore[no-untyped-def]
    mask = sparse_mask((10, 8, 8))
    job, data = masked_job(tmp_path, mask, [2.0, 4.0, 4.0])
    full = np.repeat(np.repeat(np.repeat(mask, 2, 0), 4, 1), 4, 2)
    expected, kept, _ = reference(data, full, Box.of_shape(SHAPE), job.window)
    killed, first = run_tasks(job, stop_after=3)
    run, second = run_tasks(job)
    assert killed.summary.windows + run.summary.windows == kept  # nothing computed twice
    assert not set(first) & {t for t in second if t[0] == 1}  # pass 1 recorded done is not redone
    np.testing.assert_allclose(read_output(job), expected, rtol=2e-5, atol=2e-6)
    assert run.summary.resumed


def bad(tmp_path: Path, mask: np.ndarray, mask_res: list[float] | None, match: str) -> None:
    job, _ = masked_job(tmp_path, mask, mask_res)
    with pytest.raises(SpecError, match=match) as err:
        InferenceRun.start(job, ModelInfo(1, 1, "mask-test-" + uuid.uuid4().hex))
    assert err.value.field.startswith("input.mask")
    assert not (tmp_path / "out.zarr").exists()  # nothing written


@pytest.mark.parametrize(
    ("mask", "res", "match"),
    [
        (np.ones((20, 32, 31), np.uint8), None, "does not cover"),
        (np.ones((10, 8, 8), np.uint8), [2.0, 4.0, 8.0], "does not cover"),
        (np.ones(SHAPE, np.float32), None, "bool or integer"),
        (np.ones((1, *SHAPE), np.uint8), None, "3D"),
        (np.ones((6, 8, 8), np.uint8), [3.0, 4.0, 4.0], "does not cover"),  # ceil(20 / 3) = 7
        (np.ones((10, 8, 8), np.uint8), [2.0, 4.0, 2.5], "not an integer multiple"),
        (np.ones((10, 8, 8), np.uint8), [2.0, 0.5, 4.0], "not an integer multiple"),
    ],
)
def test_a_bad_mask_is_refused_naming_input_mask(tmp_path, mask, res, match):  # type: ignore[no-untyped-def]
    bad(tmp_path, mask, res, match)


def test_a_bool_mask_is_fine_and_a_missing_one_is_named(tmp_path):  # type: ignore[no-untyped-def]
    job, _ = masked_job(tmp_path, np.ones(SHAPE, bool), None)
    InferenceRun.start(job, ModelInfo(1, 1, "mask-test"))  # accepted
    ragged, _ = masked_job(tmp_path / "b", np.ones((7, 8, 8), np.int16), [3.0, 4.0, 4.0])
    InferenceRun.start(ragged, ModelInfo(1, 1, "mask-test"))  # ceil(20 / 3) = 7 voxels of 3
    gone = replace(job, input=replace(job.input, mask=MaskSpec(str(tmp_path / "in.zarr"), "nothing")))
    with pytest.raises(SpecError) as err:
        InferenceRun.start(gone, ModelInfo(1, 1, "mask-test"))
    assert err.value.field == "input.mask.dataset"


def test_the_document_parses_a_mask_and_confines_it(tmp_path):  # type: ignore[no-untyped-def]
    from service.documents.inference import parse_inference

    root = tmp_path / "root"
    root.mkdir()
    doc = {
        "input": {"path": "in.zarr", "dataset": "raw", "mask": {"path": "in.zarr", "dataset": "mask"}},
        "model": {"torchscript": "m.pt"},
        "window": {"patch_size": [5, 7, 7]},
        "output": {"path": "out.zarr"},
    }
    job = parse_inference(doc, [root])
    assert job.input.mask == MaskSpec(str(root / "in.zarr"), "mask")
    unmasked = parse_inference({**doc, "input": {"path": "in.zarr", "dataset": "raw"}}, [root])
    assert job.layout_key("x") != unmasked.layout_key("x")
    outside = {**doc, "input": {**doc["input"], "mask": {"path": str(tmp_path / "elsewhere.zarr")}}}
    with pytest.raises(SpecError) as err:
        parse_inference(outside, [root])
    assert err.value.field == "input.mask.path"


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 6)] * 3),
    seed=st.integers(0, 2**16),
    n_windows=st.tuples(*[st.integers(1, 4)] * 3),
)
def test_keep_from_mask_is_any_over_each_box(shape, seed, n_windows):  # type: ignore[no-untyped-def]
    """The separable prefix-sum answer equals a look at every box (empty boxes included)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.15
    bounds = []
    for n, k in zip(shape, n_windows, strict=True):
        lo = rng.integers(0, n + 1, k)
        hi = np.maximum(lo, rng.integers(0, n + 1, k))
        bounds.append((lo, hi))
    got = keep_from_mask(mask, bounds)
    for index in np.ndindex(*n_windows):
        box = tuple(slice(b[0][i], b[1][i]) for b, i in zip(bounds, index, strict=True))
        assert got[index] == mask[box].any()


def test_scale_factors_from_voxel_sizes():  # type: ignore[no-untyped-def]
    assert scale_factors([32.0, 32.0, 32.0], [8.0, 8.0, 8.0]) == (4, 4, 4)
    assert scale_factors([0.3, 0.2, 0.2], [0.1, 0.1, 0.1]) == (3, 2, 2)  # decimals
    assert scale_factors(None, [8.0, 8.0, 8.0]) == (1, 1, 1)
    with pytest.raises(SpecError, match="not an integer multiple") as err:
        scale_factors([12.0, 8.0, 8.0], [8.0, 8.0, 8.0])
    assert err.value.field == "input.mask"
