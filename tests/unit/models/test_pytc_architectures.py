"""PyTC v1's architectures (models.pytc) against golden files made by PyTC v1 itself.

tests/data/pytc_arch/make_golden.py says how the files were made (PyTC is not needed here). For
each case: the state-dict keys and shapes are PyTC's; a seeded build draws the same random
weights as PyTC's (so a random-init model is PyTC's, and the construction order is PyTC's); and
PyTC's weights (stored ones loaded with ``weights_only=True``, or the seeded ones moved by the
same seeded noise) give PyTC's forward output to 1e-5, float32 on the CPU in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.errors import ModelConfigError
from models.pytc.registry import ARCHITECTURES

DATA = Path(__file__).resolve().parents[2] / "data" / "pytc_arch"
CASES: dict[str, dict[str, Any]] = json.loads((DATA / "cases.json").read_text())
KEYS: dict[str, list[list[Any]]] = json.loads((DATA / "keys.json").read_text())
SEED = 1234
LARGE = {
    "deeplabv3a",
    "deeplabv3b_aux",
    "deeplabv3c_resnext",
    "deeplabv3b_wide_resnet50_2",
    "deeplabv3c_resnext101",
    "unetr",
    "unetr_conv_no_res",
    "swinunetr",
    "swinunetr_iso_v2",
}  # ResNet-50s and larger, MONAI: seconds each


@pytest.fixture(scope="module")
def outputs() -> dict[str, np.ndarray]:
    with np.load(DATA / "outputs.npz") as data:
        return {key: data[key] for key in data.files}


def _golden() -> Any:
    sys.path.insert(0, str(DATA))
    try:
        import make_golden  # the same perturbation and hash as the files were made with
    finally:
        sys.path.remove(str(DATA))
    return make_golden


GOLDEN = _golden()


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in names]


def _build(case: dict[str, Any]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return ARCHITECTURES[case["architecture"]](case["config"])


def _input(case: dict[str, Any]) -> torch.Tensor:
    return torch.rand(case["input_shape"], generator=torch.Generator().manual_seed(SEED + 2))


def _forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_keys_init_and_forward_equal_pytc(name: str, outputs: dict[str, np.ndarray]) -> None:
    case = CASES[name]
    model = _build(case)
    init = model.state_dict()
    assert [[k, list(v.shape)] for k, v in init.items()] == KEYS[name]
    assert GOLDEN.state_sha256(init) == case["init_sha256"], "the seeded init is not PyTC's"
    stored = DATA / f"{name}.pt"
    if stored.exists():
        state = torch.load(stored, weights_only=True, map_location="cpu")
    else:
        state = GOLDEN.perturb(init)
    model.load_state_dict(state, strict=True)
    np.testing.assert_allclose(_forward(model, _input(case)), outputs[f"{name}/output"], rtol=0, atol=1e-5)


def test_stored_state_dicts_are_the_seeded_ones_perturbed() -> None:
    """The stored files are what the seed gives (so the unstored cases are proven the same way)."""
    for path in sorted(DATA.glob("*.pt")):
        case = CASES[path.stem]
        stored = torch.load(path, weights_only=True)
        expected = GOLDEN.perturb(_build(case).state_dict())
        assert list(stored) == list(expected)
        assert all(torch.equal(stored[k], expected[k]) for k in stored), path.name


def test_repvgg_training_checkpoint_runs_in_deploy_mode_as_pytc(outputs: dict[str, np.ndarray]) -> None:
    """PyTC folds a RepVGG training checkpoint into deploy weights for inference (update_state_dict)."""
    case = CASES["fpn_3d_repvgg"]
    model = ARCHITECTURES["fpn_3d"]({**case["config"], "deploy": True})
    train_state = torch.load(DATA / "fpn_3d_repvgg.pt", weights_only=True)
    model.load_state_dict(model.adapt_state_dict(train_state), strict=True)
    got = _forward(model, _input(case))
    np.testing.assert_allclose(got, outputs["fpn_3d_repvgg/deploy_output"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, outputs["fpn_3d_repvgg/output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["unet_2d", "unet_plus_2d", "unet_2d_se_pooling_bn"])
def test_2d_models_run_over_volumes_slice_by_slice(name: str, outputs: dict[str, np.ndarray]) -> None:
    """(N, C, Z, Y, X) windows: each z slice is PyTC's squeezed 2D window (z = 1 is exactly it)."""
    case = CASES[name]
    model = _build(case)
    model.load_state_dict(GOLDEN.perturb(model.state_dict()))
    x = _input(case)
    expected = outputs[f"{name}/output"]
    np.testing.assert_allclose(_forward(model, x[:, :, None]), expected[:, :, None], rtol=0, atol=1e-5)
    stack = torch.stack([x, x.flip(-1)], dim=2)  # two different slices in one window
    got = _forward(model, stack)
    np.testing.assert_allclose(got[:, :, 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:, :, 1], _forward(model, x.flip(-1)), rtol=0, atol=1e-5)


def test_unet3d_is_unet_3d_with_the_contract_names() -> None:
    config = {"in_channels": 2, "out_channels": 1, "filters": [4, 8, 8, 8, 8], "block_type": "residual_pa"}
    pytc = {"in_channel": 2, "out_channel": 1, "filters": [4, 8, 8, 8, 8], "block_type": "residual_pa"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ours = ARCHITECTURES["unet3d"](config).state_dict()
        torch.manual_seed(0)
        theirs = ARCHITECTURES["unet_3d"](pytc).state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_common_pytc_keys_are_accepted_and_ignored_where_pytc_ignores_them() -> None:
    """PyTC's build_model passes every common key to every architecture."""
    config = {"in_planes": 1, "out_planes": 2, "filters": [4, 8, 8, 8, 8], "ks": [3, 3, 5, 3, 3],
              "blocks": [2, 2, 2, 2], "attn": "squeeze_excitation", "return_feats": None}  # fmt: skip
    assert ARCHITECTURES["unet_3d"](config).out_channels == 2


@pytest.mark.parametrize(
    ("architecture", "config", "named"),
    [
        ("unet_3d", {"filter": [4, 8]}, "'filter'"),
        ("unet_3d", {"filters": "4,8"}, "'filters'"),
        ("unet_3d", {"in_channel": 1, "in_channels": 2}, "'in_channels'"),
        ("unet_2d", {"block_type": "residual_pa"}, "block_type"),
        ("unet_3d", {"norm_mode": "gn", "filters": [4, 8, 8, 8, 8]}, "gn"),
        ("fpn_3d", {"backbone_type": "vgg"}, "backbone_type"),
        ("deeplabv3a", {"backbone_type": "resnet18"}, "2048"),
        ("unetr", {"img_size": [16, 30, 32]}, "img_size"),
        ("swinunetr", {"img_size": [32, 64, 64], "feature_size": 16}, "feature_size"),
        ("swinunetr", {"img_size": [32, 64, 64], "spatial_dims": 2}, "spatial_dims"),
    ],
)
def test_bad_configs_are_refused_by_name(architecture: str, config: dict[str, Any], named: str) -> None:
    with pytest.raises(ModelConfigError, match=named):
        ARCHITECTURES[architecture](config)


def test_every_pytc_architecture_is_registered() -> None:
    pytc = {"unet_3d", "unet_2d", "fpn_3d", "unet_plus_3d", "unet_plus_2d", "deeplabv3a", "deeplabv3b",
            "deeplabv3c", "unetr", "swinunetr"}  # fmt: skip
    assert pytc <= set(ARCHITECTURES)
    covered = {case["architecture"] for case in CASES.values()}
    assert pytc <= covered


def test_golden_files_stay_small() -> None:
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 3_000_000
    assert hashlib.sha256((DATA / "cases.json").read_bytes()).hexdigest()  # readable


def test_pytc_checkpoint_through_the_loader_folds_repvgg_and_strips_module(
    tmp_path: Path, outputs: dict[str, np.ndarray]
) -> None:
    """A DataParallel training checkpoint of fpn_3d/repvgg, as PyTC saves it, run by a job in
    deploy mode: load_model strips ``module.``, folds the branches and gives PyTC's output."""
    from models.loading import load_model
    from models.ref import ModelRef

    case = CASES["fpn_3d_repvgg"]
    state = torch.load(DATA / "fpn_3d_repvgg.pt", weights_only=True)
    checkpoint = tmp_path / "checkpoint_00010.pth.tar"
    torch.save({"iteration": 10, "state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    config = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in {**case["config"], "deploy": True}.items()
    )
    ref = ModelRef("architecture", architecture="fpn_3d", config=config, checkpoint=str(checkpoint))
    loaded = load_model(ref)
    assert (loaded.in_channels, loaded.out_channels) == (1, 3)
    got = _forward(loaded.module, _input(case))
    np.testing.assert_allclose(got, outputs["fpn_3d_repvgg/deploy_output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("architecture", ["unet3d", "unet_3d"])
def test_the_control_plane_counts_unet_3d_exactly(architecture: str) -> None:
    from models.sizes import architecture_parameters

    config = {
        "in_channel": 2,
        "out_channel": 3,
        "filters": [8, 16, 24, 32, 40],
        "pooling": True,
        "norm_mode": "gn",
    }
    with torch.device("meta"):
        model = ARCHITECTURES[architecture](config)
    assert architecture_parameters(architecture, config) == sum(p.numel() for p in model.parameters())
    assert architecture_parameters("fpn_3d", config) is None  # counted on the meta device by the workers
