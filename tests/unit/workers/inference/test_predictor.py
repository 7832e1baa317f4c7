"""Forward passes: TTA variants, reductions, activations per head; and the engine against MONAI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tests.helpers import make_job, run_sequential
from workers.inference.job import WindowSpec
from workers.inference.predictor import (
    WindowPredictor,
    apply_activations,
    prefers_channels_last,
    tta_variants,
)


class Asymmetric(torch.nn.Module):
    """Not equivariant to flips or transposes: TTA changes its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1])
        return self.conv(x) + ramp


def predictor(
    module: torch.nn.Module,
    variants: int = 1,
    reduce: str = "mean",
    heads=(2,),
    acts=("none",),
    channels_last=False,
):  # type: ignore[no-untyped-def]
    return WindowPredictor(
        module, torch.device("cpu"), tuple(heads), tuple(acts), variants, reduce, channels_last=channels_last
    )  # type: ignore[arg-type]


def test_variant_counts_follow_pytc() -> None:
    assert len(tta_variants(1)) == 1
    assert len(tta_variants(4)) == 4 and not any(v[2] or v[3] for v in tta_variants(4))
    assert len(tta_variants(8)) == 8 and not any(v[2] for v in tta_variants(8))
    assert len(tta_variants(16)) == 16


@pytest.mark.parametrize("variants", [1, 4, 8, 16])
@pytest.mark.parametrize("reduce", ["mean", "min", "max"])
def test_identity_is_unchanged_by_tta(variants: int, reduce: str) -> None:
    x = np.random.default_rng(1).random((3, 1, 5, 8, 8), dtype=np.float32)
    out = predictor(torch.nn.Identity(), variants, reduce, heads=(1,)).predict(x)
    np.testing.assert_allclose(out, x, rtol=1e-6)


@pytest.mark.parametrize("reduce", ["mean", "min", "max"])
def test_tta_reduces_inverse_transformed_variants(reduce: str) -> None:
    model = Asymmetric().eval()
    x = torch.from_numpy(np.random.default_rng(2).random((2, 1, 5, 8, 8), dtype=np.float32))
    with torch.no_grad():
        outs = [
            model(x),
            model(x.flip(4)).flip(4),
            model(x.flip(3)).flip(3),
            model(x.flip(3, 4)).flip(3, 4),
            model(x.transpose(3, 4)).transpose(3, 4),
        ]
    stacked = torch.stack(outs[:4])
    expected = {"mean": stacked.mean(0), "min": stacked.min(0).values, "max": stacked.max(0).values}[reduce]
    got = predictor(model, 4, reduce).predict(x.numpy())
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    eight = predictor(model, 8, "max").predict(x.numpy())
    assert (eight >= torch.maximum(expected, outs[4]).numpy() - 1e-6).all() if reduce == "max" else True


def test_activation_is_applied_per_variant_before_reduction() -> None:
    model = Asymmetric().eval()
    x = np.random.default_rng(3).random((1, 1, 5, 8, 8), dtype=np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(model(xt)), torch.sigmoid(model(xt.flip(4))).flip(4)])
    # variants 4 contains both; check mean of sigmoids (not sigmoid of mean) over all four
    with torch.no_grad():
        four = [
            torch.sigmoid(model(xt.flip(*d)).flip(*d)) if d else torch.sigmoid(model(xt))
            for d in [(), (4,), (3,), (3, 4)]
        ]
    got = predictor(model, 4, "mean", heads=(2,), acts=("sigmoid",)).predict(x)
    np.testing.assert_allclose(got, torch.stack(four).mean(0).numpy(), rtol=1e-5)
    assert expected.shape[1:] == got.shape


def test_activations_per_head() -> None:
    x = torch.randn(2, 6, 3, 4, 4)
    y = apply_activations(x, (1, 3, 1, 1), ("sigmoid", "softmax", "tanh", "none"))
    torch.testing.assert_close(y[:, 0], torch.sigmoid(x[:, 0]))
    torch.testing.assert_close(y[:, 1:4], torch.softmax(x[:, 1:4], dim=1))
    torch.testing.assert_close(y[:, 1:4].sum(1), torch.ones(2, 3, 4, 4))
    torch.testing.assert_close(y[:, 4], (torch.tanh(x[:, 4]) + 1) / 2)
    torch.testing.assert_close(y[:, 5], x[:, 5])


def test_model_changing_spatial_size_is_an_error() -> None:
    shrink = torch.nn.Conv3d(1, 1, 3)
    with pytest.raises(ValueError, match="spatial shape"):
        predictor(shrink, heads=(1,)).predict(np.zeros((1, 1, 5, 8, 8), np.float32))


def test_channels_last_runs_eager_unet3d_to_float32_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    from models.unet3d import build_unet3d

    torch.manual_seed(3)
    net = build_unet3d(
        {"in_channels": 1, "out_channels": 2, "filters": [4, 8, 12], "isotropy": [False, False, True]}
    ).eval()
    cpu = torch.device("cpu")
    assert prefers_channels_last(net, cpu)
    assert not prefers_channels_last(torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1)), cpu)
    assert not prefers_channels_last(torch.nn.Identity(), cpu)
    assert not prefers_channels_last(net, cpu, "contiguous")  # compute.memory_format: PyTC's layout
    monkeypatch.setenv("PYTC_CHANNELS_LAST", "0")
    assert not prefers_channels_last(net, cpu)

    x = np.random.default_rng(5).random((3, 1, 9, 33, 33), dtype=np.float32)
    plain = predictor(net, 8, heads=(2,), acts=("sigmoid",)).predict(x)
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    out = predictor(fast, 8, heads=(2,), acts=("sigmoid",), channels_last=True).predict(x)
    assert out.flags.c_contiguous and out.shape == plain.shape
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("block_shape", [(32, 48, 48), (8, 16, 16), (16, 16, 32)])
def test_engine_equals_monai_sliding_window_inference(
    tmp_path: Path, block_shape: tuple[int, int, int], channels_last: bool
) -> None:
    from monai.inferers import sliding_window_inference

    data = np.random.default_rng(4).random((19, 45, 41), dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 16, 16))
    model = Asymmetric().eval()
    patch, overlap = (7, 17, 17), 0.5
    stride = tuple(max(1, int(p * (1 - overlap))) for p in patch)
    window = WindowSpec(patch, stride, "monai_gaussian", (0, 0, 0), "reflect", batch_size=4)  # type: ignore[arg-type]
    job = make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=block_shape)
    ours_model = Asymmetric().eval()
    if channels_last:  # what the workers do with eager CPU models (workers.inference.predictor)
        ours_model = ours_model.to(memory_format=torch.channels_last_3d)
    ours, _ = run_sequential(job, predictor(ours_model, channels_last=channels_last).predict, 2)
    with torch.no_grad():
        theirs = sliding_window_inference(
            torch.from_numpy(data)[None, None],
            patch,
            4,
            model,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
    np.testing.assert_allclose(ours, theirs[0].numpy(), rtol=1e-5, atol=1e-5)


def test_allocator_keeps_big_buffers_on_the_heap() -> None:
    """After tuning, freeing and re-allocating a 64 MiB buffer faults in no new pages."""
    import resource

    from workers.runtime.allocator import tune_allocator

    assert tune_allocator()  # glibc on this platform takes every setting
    size = 64 << 20
    np.ones(size // 8)  # allocated, touched and freed: the heap now holds it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(size // 8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # untuned, glibc maps each buffer afresh: thousands of faults here (hundreds with huge pages)
    assert faults < 50, faults


class AffinityOracle(torch.nn.Module):
    """Exact nearest-neighbour affinities of a label input, (z, y, x) channels, PyTC's convention:
    channel a at p is 1 where p and its predecessor along a hold the same non-zero label."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        for channel, dim in enumerate((2, 3, 4)):
            n = x.shape[dim]
            here, before = x.narrow(dim, 1, n - 1), x.narrow(dim, 0, n - 1)
            same = ((here == before) & (here > 0)).float()
            out[:, channel : channel + 1].narrow(dim, 1, n - 1).copy_(same)
        return out


@pytest.mark.parametrize("variants", [4, 8, 16])
def test_tta_realigns_affinity_channels(variants: int) -> None:
    labels = np.random.default_rng(6).integers(0, 3, (2, 1, 6, 9, 9)).astype(np.float32)
    oracle = AffinityOracle()
    plain = predictor(oracle, 1, heads=(3,), acts=("none",)).predict(labels)
    aligned = WindowPredictor(
        oracle, torch.device("cpu"), (3,), ("none",), variants, "mean", targets=("affinity",)
    ).predict(labels)
    naive = predictor(oracle, variants, heads=(3,), acts=("none",)).predict(labels)
    for channel in range(3):  # every voxel but the first plane along the channel's axis
        inner = (slice(None), channel, *(slice(1, None) if a == channel else slice(None) for a in range(3)))
        np.testing.assert_array_equal(aligned[inner], plain[inner])
        if channel > 0 or variants == 16:  # an axis some variant flips: without the fix, wrong
            assert not np.array_equal(naive[inner], plain[inner])
