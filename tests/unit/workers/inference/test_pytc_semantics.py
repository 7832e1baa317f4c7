"""PyTC v1's inference semantics as options of the engine: uint8 by truncation (the default) or
rounding, heads without activation clipped at 0 per window with PyTC's TTA min/max starts
(``window.raw_heads: pytc``), and layout keys that never let a changed default mix two maps."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from models.ref import ModelInfo
from tests.helpers import make_job, run_sequential
from workers.errors import OutputExistsError
from workers.inference.engine import to_output_dtype
from workers.inference.job import InferenceJob, WindowSpec
from workers.inference.predictor import WindowPredictor
from workers.inference.run import run_serially


def test_uint8_truncates_as_pytc_and_rounds_when_asked() -> None:
    values = np.array([-0.2, 0.0, 0.5, 0.999, 1.0, 1.7, 0.0039, 0.0040], dtype=np.float32)
    pytc = values.copy()
    pytc[pytc < 0] = 0  # trainer.py test(): negatives to 0, times 255, astype(uint8)
    pytc = (np.minimum(pytc, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_output_dtype(values, "uint8"), pytc)
    np.testing.assert_array_equal(
        to_output_dtype(values, "uint8", "truncate"), [0, 0, 127, 254, 255, 255, 0, 1]
    )
    np.testing.assert_array_equal(to_output_dtype(values, "uint8", "round"), [0, 0, 128, 255, 255, 255, 1, 1])
    half_up = np.random.default_rng(0).random(10_000, dtype=np.float32)
    diff = to_output_dtype(half_up, "uint8", "round").astype(int) - to_output_dtype(half_up, "uint8")
    assert set(np.unique(diff)) == {0, 1} and 0.4 < diff.mean() < 0.6  # about half a level apart


class Raw(torch.nn.Module):
    """A head without activation whose output goes well below 0 and above 1, and changes under flips."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2.0, 3.0, x.shape[-1])
        return torch.cat([x * 4.0 - 2.0 + ramp, -x - ramp], dim=1)


def _predictor(variants: int, reduce: str, raw_heads: str) -> WindowPredictor:
    return WindowPredictor(
        Raw(),
        torch.device("cpu"),
        (2,),
        ("none",),
        variants,
        reduce,
        raw_heads=raw_heads,  # type: ignore[arg-type]
    )


def _pytc_tta(x: torch.Tensor, variants: int, reduce: str) -> np.ndarray:
    """PyTC's TestAugmentor._update_output and trainer.test's clip, written out (xflip, yflip)."""
    model, out = Raw(), None
    flips = [[], [4], [3], [3, 4]][:variants]
    for dims in flips:
        v = (model(x.flip(dims)).flip(dims) if dims else model(x)).numpy()
        if out is None:
            out = {"min": np.ones_like(v), "max": np.zeros_like(v), "mean": np.zeros_like(v)}[reduce]
        out = np.minimum(out, v) if reduce == "min" else np.maximum(out, v) if reduce == "max" else out + v
    assert out is not None
    if reduce == "mean":
        out = out / len(flips)
    out[out < 0] = 0
    return out


@pytest.mark.parametrize("variants", [1, 4])
@pytest.mark.parametrize("reduce", ["mean", "min", "max"])
def test_raw_heads_pytc_equals_pytcs_augmentor_and_clip(variants: int, reduce: str) -> None:
    x = torch.from_numpy(np.random.default_rng(3).random((2, 1, 3, 6, 7), dtype=np.float32))
    ours = _predictor(variants, reduce, "pytc").predict(x.numpy())
    np.testing.assert_allclose(ours, _pytc_tta(x, variants, reduce), rtol=1e-6, atol=1e-7)
    kept = _predictor(variants, reduce, "keep").predict(x.numpy())
    assert kept.min() < 0 and ours.min() == 0  # keep: today's values, negatives and all


def _job(tmp_path: Path, **window: object) -> InferenceJob:
    spec = WindowSpec((5, 7, 7), (3, 4, 4), **window)  # type: ignore[arg-type]
    return make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", spec, block_shape=(8, 8, 8))


def _legacy_layout_key(job: InferenceJob, sha: str) -> str:
    """The layout key as it was computed before PyTC's blending, truncation and raw heads came."""
    window = {k: v for k, v in asdict(job.window).items() if k != "raw_heads"}
    window["batch_size"] = 4
    window["tta_reduce"] = job.window.tta_reduce if job.window.tta_variants > 1 else "mean"
    # pyramid (true) and shards (none) came at the same time and leave keys as they were by default
    dropped = ("overwrite", "uint8_rounding", "pyramid", "shards")
    output = {k: v for k, v in asdict(job.output).items() if k not in dropped}
    if not output["targets"]:
        del output["targets"]
    payload = {
        "input": {k: v for k, v in asdict(job.input).items() if k != "mask"},
        "model_sha256": sha,
        "model": asdict(replace(job.model, name=None)),
        "window": window,
        "output": output,
        "block_shape": job.compute.block_shape,
        "precision": job.compute.precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def test_layout_keys_keep_old_outputs_apart_from_the_new_defaults(tmp_path: Path) -> None:
    monai = _job(tmp_path, blending="monai_gaussian")
    pytc = _job(tmp_path, blending="gaussian")
    # what was called gaussian before (MONAI's map) keeps its key under its new name ...
    assert monai.layout_key("s") == _legacy_layout_key(replace(monai, window=pytc.window), "s")
    # ... and PyTC's gaussian, now the default, has a key of its own
    assert pytc.layout_key("s") not in (monai.layout_key("s"), _legacy_layout_key(pytc, "s"))
    uint8 = replace(monai, output=replace(monai.output, dtype="uint8"))
    rounded = replace(uint8, output=replace(uint8.output, uint8_rounding="round"))
    assert rounded.layout_key("s") == _legacy_layout_key(replace(rounded, window=pytc.window), "s")
    assert uint8.layout_key("s") != rounded.layout_key("s")  # truncation: other values, other key
    floats = replace(monai, output=replace(monai.output, uint8_rounding="round"))
    assert floats.layout_key("s") == monai.layout_key("s")  # rounding changes no float value
    clipped = _job(tmp_path, blending="monai_gaussian", raw_heads="pytc")
    assert clipped.layout_key("s") != monai.layout_key("s")
    one_min = _job(tmp_path, raw_heads="pytc", tta_reduce="min")
    assert one_min.layout_key("s") != _job(tmp_path, raw_heads="pytc").layout_key("s")


def test_an_old_output_is_not_resumed_under_the_new_default(tmp_path: Path) -> None:
    """An output written with MONAI's map (``gaussian`` before) and run again with the new default
    is refused (it exists and was not made by this job) instead of mixing the two maps."""
    data = np.random.default_rng(1).random((16, 24, 24), dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    info = ModelInfo(1, 1, "test-" + uuid.uuid4().hex)
    old = _job(tmp_path, blending="monai_gaussian")
    run_serially(old, info, predict=lambda b: b.copy())
    with pytest.raises(OutputExistsError):
        run_serially(_job(tmp_path, blending="gaussian"), info, predict=lambda b: b.copy())
    run_serially(old, info, predict=lambda b: b.copy())  # the same job resumes (nothing left to do)


def test_pytc_gaussian_blends_a_constant_to_itself(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((16, 24, 24), dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    out, _ = run_sequential(_job(tmp_path), lambda b: np.full_like(b, 0.25), 1)
    np.testing.assert_allclose(out, 0.25, rtol=1e-6)
