"""UNet3D: PyTC's key names and shapes, output sizes, init, and the config builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.errors import ModelConfigError, ModelError
from models.unet3d import ARCHITECTURES, BasicBlock3d, UNet3D, build_unet3d

SMALL = (4, 6, 8, 10, 12)


@pytest.fixture(scope="module")
def small() -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(filters=SMALL).eval()


def _run(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.rand(shape))


@pytest.mark.parametrize("spatial", [(17, 129, 129), (9, 33, 33), (5, 17, 17)])
def test_output_size_equals_input_for_2n_plus_1(small: UNet3D, spatial: tuple[int, int, int]) -> None:
    assert _run(small, (2, 1, *spatial)).shape == (2, 3, *spatial)


@pytest.mark.parametrize("spatial", [(8, 30, 31), (1, 16, 16), (4, 10, 7)])
def test_output_size_equals_input_for_any_size(small: UNet3D, spatial: tuple[int, int, int]) -> None:
    assert _run(small, (1, 1, *spatial)).shape == (1, 3, *spatial)


def test_stride_two_stages_halve_2n_plus_1_sizes(small: UNet3D) -> None:
    shapes: list[tuple[int, ...]] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
        for layer in small.down_layers
    ]
    try:
        _run(small, (1, 1, 17, 65, 65))
    finally:
        for hook in hooks:
            hook.remove()
    # Stages 1-2 are anisotropic (xy only), 3-4 isotropic: z 17 -> 9 -> 5, xy 65 -> 33 -> 17 -> 9 -> 5.
    assert shapes == [(17, 65, 65), (17, 33, 33), (17, 17, 17), (9, 9, 9), (5, 5, 5)]


def test_state_dict_keys_follow_pytc(small: UNet3D) -> None:
    keys = list(small.state_dict())
    for key in [
        "conv_in.0.weight",
        "conv_in.1.running_mean",
        "down_layers.1.1.0.weight",
        "down_layers.0.2.conv.0.0.weight",
        "up_layers.0.0.0.weight",
        "up_layers.0.1.conv.1.0.weight",
        "conv_out.0.bias",
    ]:
        assert key in keys
    # PyTC registers conv_in, conv_out, down_layers, up_layers in this order.
    assert keys[0] == "conv_in.0.weight"
    assert keys[6:8] == ["conv_out.0.weight", "conv_out.0.bias"]
    assert not any("projector" in k for k in keys)
    assert len(keys) == 170


def test_down_layers_keep_pytc_pooling_slot(small: UNet3D) -> None:
    # PyTC's down_layers.i is Sequential(pooling, conv3d_norm_act, block); the pooling slot is an
    # Identity (no parameters), so the conv is at index 1 and the block at 2, as in its checkpoints.
    keys = set(small.state_dict())
    assert {"down_layers.1.1.0.weight", "down_layers.0.2.conv.0.0.weight"} <= keys
    assert not any(k.startswith("down_layers.1.0.") for k in keys)


def test_weight_shapes(small: UNet3D) -> None:
    shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    assert shapes["conv_in.0.weight"] == (4, 1, 1, 5, 5)
    assert shapes["down_layers.1.1.0.weight"] == (6, 4, 1, 3, 3)  # anisotropic stage
    assert shapes["down_layers.3.1.0.weight"] == (10, 8, 3, 3, 3)  # isotropic stage
    assert shapes["down_layers.3.2.conv.0.0.weight"] == (10, 10, 1, 3, 3)  # PyTC's blocks are (1,3,3)
    assert shapes["up_layers.3.0.0.weight"] == (10, 12, 3, 3, 3)
    assert shapes["up_layers.0.1.conv.1.0.weight"] == (4, 4, 1, 3, 3)
    assert shapes["conv_out.0.weight"] == (3, 4, 1, 5, 5)
    assert shapes["conv_out.0.bias"] == (3,)


def test_layer_settings(small: UNet3D) -> None:
    conv_in = small.conv_in[0]
    assert isinstance(conv_in, nn.Conv3d)
    assert conv_in.padding_mode == "replicate" and conv_in.bias is None
    assert isinstance(small.conv_in[1], nn.BatchNorm3d) and isinstance(small.conv_in[2], nn.ELU)
    assert isinstance(small.conv_out[1], nn.Identity) and isinstance(small.conv_out[2], nn.Identity)
    strides = [layer[1][0].stride for layer in small.down_layers]
    assert strides == [(1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    block = small.down_layers[0][2]
    assert isinstance(block, BasicBlock3d) and isinstance(block.projector, nn.Identity)


def test_is_isotropic_uses_cubic_io_kernels() -> None:
    model = UNet3D(filters=(4, 6), is_isotropic=True)
    assert model.conv_in[0].kernel_size == (5, 5, 5)
    assert model.down_layers[1][1][0].stride == (2, 2, 2)
    assert _run(model.eval(), (1, 1, 9, 9, 9)).shape == (1, 3, 9, 9, 9)


def test_block_projects_when_shape_changes() -> None:
    block = BasicBlock3d(2, 4)
    assert isinstance(block.projector, nn.Sequential)
    assert _run(block.eval(), (1, 2, 3, 5, 5)).shape == (1, 4, 3, 5, 5)


def test_init_is_orthogonal_and_follows_torch_rng() -> None:
    torch.manual_seed(3)
    a = UNet3D(filters=SMALL)
    torch.manual_seed(3)
    b = UNet3D(filters=SMALL)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
    weight = a.conv_in[0].weight.detach().reshape(4, -1)  # 4 rows of 25: orthonormal rows
    torch.testing.assert_close(weight @ weight.T, torch.eye(4), atol=1e-5, rtol=0)


def test_build_from_contract_and_pytc_keys() -> None:
    model = build_unet3d({"in_channels": 2, "out_channels": 1, "filters": [4, 6, 8], "isotropy": [False] * 3})
    assert (model.in_channels, model.out_channels) == (2, 1)
    assert model.conv_in[0].weight.shape == (4, 2, 1, 5, 5)
    pytc = build_unet3d({"in_channel": 2, "out_channel": 1, "filters": (4, 6, 8), "isotropy": (False,) * 3})
    assert pytc.state_dict().keys() == model.state_dict().keys()
    assert ARCHITECTURES["unet3d"] is build_unet3d


def test_build_with_modes() -> None:
    model = build_unet3d(
        {
            "filters": [8, 16],
            "isotropy": [False, True],
            "act_mode": "relu",
            "norm_mode": "gn",
            "pad_mode": "zeros",
        }
    )
    assert isinstance(model.conv_in[1], nn.GroupNorm) and isinstance(model.conv_in[2], nn.ReLU)
    assert model.conv_in[0].padding_mode == "zeros"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"kernel": 3}, "kernel"),
        ({"in_channels": "1"}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"filters": [4, 6.5]}, "filters"),
        ({"isotropy": [1, 0, 0, 1, 1]}, "isotropy"),
        ({"is_isotropic": "yes"}, "is_isotropic"),
        ({"act_mode": "tanhh"}, "act_mode"),
        ({"pad_mode": "mirror"}, "pad_mode"),
        ({"filters": [4, 6]}, "isotropy"),
        ({"in_channels": 1, "in_channel": 2}, "in_channel"),
        ({"norm_mode": "gn", "filters": [4, 6], "isotropy": [False, True]}, "gn"),
    ],
)
def test_build_rejects_bad_config_naming_the_key(config: dict[str, object], named: str) -> None:
    with pytest.raises(ModelError, match=named) as info:
        build_unet3d(config)
    assert isinstance(info.value, ModelConfigError) and isinstance(info.value, ValueError)
