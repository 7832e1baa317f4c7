"""PyTC v1's 3D backbones for ``fpn_3d`` (``connectomics/model/backbone/``): ``resnet``,
``repvgg`` and ``efficientnet`` here, ``botnet`` in :mod:`models.pytc.botnet`. Each has five
stages ``layer0`` .. ``layer4`` whose outputs the FPN takes; names follow PyTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.errors import ModelConfigError
from models.pytc.layers import activation, conv_norm_act, norm, padding_mode
from models.pytc.residual import BasicBlock, InvertedResidual, InvertedResidualDilated


def _stride(stride: int, isotropic: bool) -> Any:
    return (1, 2, 2) if stride == 2 and not isotropic else stride


class Stages(nn.Module):
    """Runs ``layer0`` .. ``layer4`` (after an optional stem) and returns every stage's output."""

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


class ResNet3D(Stages):
    """PyTC's ``ResNet3D``: a conv stem, then four stages of residual blocks, each halving."""

    def __init__(
        self,
        block_type: str = "residual",
        in_channel: int = 1,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        blocks: Sequence[int] = (2, 2, 2, 2),
        isotropy: Sequence[bool] = (False, False, False, True, True),
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        **_: Any,
    ) -> None:
        super().__init__()
        if block_type not in ("residual", "residual_se"):
            raise ModelConfigError(
                f"block_type of the resnet backbone must be residual or residual_se, got {block_type!r}"
            )
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "norm_mode": norm_mode}
        kernel, padding = (5, 2) if isotropy[0] else ((1, 5, 5), (0, 2, 2))
        self.layer0 = conv_norm_act(3, in_channel, filters[0], kernel, 1, padding, **shared)
        for i in range(1, 5):
            stride = _stride(2, isotropy[i])
            layers = [
                BasicBlock(3, filters[i - 1] if b == 0 else filters[i], filters[i], stride if b == 0 else 1,
                           isotropic=isotropy[i], se=block_type == "residual_se", **shared)
                for b in range(blocks[i - 1])
            ]  # fmt: skip
            self.add_module(f"layer{i}", nn.Sequential(*layers))


class RepVGGBlock3D(nn.Module):
    """PyTC's ``RepVGGBlock3D``: a 3x3 (or 1x3x3) conv-BN, a 1x1 conv-BN and, when the shape
    stays, a BN of the input, summed; in deploy mode one biased conv (``rbr_reparam``) holds their
    sum. Norms are always batch norms, as in PyTC."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: Any = 1,
        *,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        isotropic: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.act = activation(act_mode)
        kernel, padding = (3, 1) if isotropic else ((1, 3, 3), (0, 1, 1))
        if deploy:
            self.rbr_reparam = nn.Conv3d(
                in_planes, planes, kernel, stride, padding, bias=True, padding_mode=padding_mode(pad_mode)
            )
            return
        self.rbr_identity = nn.BatchNorm3d(in_planes) if planes == in_planes and stride == 1 else None
        self.rbr_dense = _conv_bn(in_planes, planes, kernel, stride, padding, pad_mode)
        self.rbr_1x1 = _conv_bn(in_planes, planes, 1, stride, 0, "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.act(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)


def _conv_bn(
    in_planes: int, planes: int, kernel: Any, stride: Any, padding: Any, pad_mode: str
) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module(
        "conv",
        nn.Conv3d(
            in_planes, planes, kernel, stride, padding, bias=False, padding_mode=padding_mode(pad_mode)
        ),
    )
    branch.add_module("bn", nn.BatchNorm3d(planes))
    return branch


class RepVGG3D(Stages):
    """PyTC's ``RepVGG3D``: five stages of RepVGG blocks (``layer0`` one block, stride 1)."""

    def __init__(
        self,
        in_channel: int = 1,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        blocks: Sequence[int] = (4, 4, 4, 4),
        isotropy: Sequence[bool] = (False, False, False, True, True),
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        deploy: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "deploy": deploy}
        counts = [1, *blocks[:4]]
        for i in range(5):
            stride = _stride(2 if i else 1, isotropy[i])
            in_planes = in_channel if i == 0 else filters[i - 1]
            layers = [
                RepVGGBlock3D(in_planes if b == 0 else filters[i], filters[i], stride if b == 0 else 1,
                              isotropic=isotropy[i], **shared)
                for b in range(counts[i])
            ]  # fmt: skip
            self.add_module(f"layer{i}", nn.Sequential(*layers))


def repvgg_deploy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PyTC's ``RepVGG3D.repvgg_convert_as_backbone``: a training checkpoint's three branches of
    every ``backbone.<layer>.<i>`` block folded into one ``rbr_reparam`` conv (weight and bias),
    as PyTC does when it loads an ``fpn_3d``/``repvgg`` checkpoint for inference."""
    out = dict(state)
    for key in state:
        parts = key.split(".")
        if (
            len(parts) < 5
            or parts[0] != "backbone"
            or parts[3] != "rbr_dense"
            or not key.endswith("conv.weight")
        ):
            continue
        prefix = ".".join(parts[:3])
        kernel, bias = _fold(out, prefix)
        for name in [k for k in out if k.startswith(prefix + ".rbr_")]:
            del out[name]
        out[prefix + ".rbr_reparam.weight"], out[prefix + ".rbr_reparam.bias"] = kernel, bias
    return out


def _fold(state: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    dense = state[prefix + ".rbr_dense.conv.weight"]
    isotropic = dense.shape[2] == 3
    kernel, bias = _fused(dense, state, prefix + ".rbr_dense.bn")
    k1, b1 = _fused(state[prefix + ".rbr_1x1.conv.weight"], state, prefix + ".rbr_1x1.bn")
    kernel = kernel + nn.functional.pad(k1, [1, 1, 1, 1, 1, 1] if isotropic else [1, 1, 1, 1, 0, 0])
    bias = bias + b1
    if prefix + ".rbr_identity.weight" in state:
        planes = dense.shape[1]
        identity = torch.zeros((planes, planes, *dense.shape[2:]), dtype=torch.float)
        for i in range(planes):
            identity[i, i, 1 if isotropic else 0, 1, 1] = 1.0
        ki, bi = _fused(identity, state, prefix + ".rbr_identity")
        kernel, bias = kernel + ki, bias + bi
    return kernel, bias


def _fused(
    kernel: torch.Tensor, state: dict[str, torch.Tensor], bn: str
) -> tuple[torch.Tensor, torch.Tensor]:
    std = (state[bn + ".running_var"] + 1e-5).sqrt()
    gamma = state[bn + ".weight"]
    return kernel * (gamma / std).reshape(-1, 1, 1, 1, 1), state[bn + ".bias"] - state[
        bn + ".running_mean"
    ] * gamma / std


class EfficientNet3D(Stages):
    """PyTC's ``EfficientNet3D``: a 3x3x3 stem (``conv1``, ``bn1``; four dilated convs for
    ``inverted_res_dilated``), then five stacks of inverted residual blocks."""

    STRIDES = (1, 2, 2, (1, 2, 2), 2)

    def __init__(
        self,
        block_type: str = "inverted_res",
        in_channel: int = 1,
        filters: Sequence[int] = (32, 64, 96, 128, 160),
        blocks: Sequence[int] = (1, 2, 2, 2, 4),
        ks: Sequence[int] = (3, 3, 5, 3, 3),
        isotropy: Sequence[bool] = (False, False, False, True, True),
        attention: str | None = "squeeze_excitation",
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        **_: Any,
    ) -> None:
        super().__init__()
        if block_type not in ("inverted_res", "inverted_res_dilated"):
            raise ModelConfigError(
                "block_type of the efficientnet backbone must be inverted_res or inverted_res_dilated, "
                f"got {block_type!r}"
            )
        dilated = block_type == "inverted_res_dilated"
        self.conv1: nn.Module
        if dilated:
            self.conv1 = DilatedBlock(in_channel, filters[0] // 4, pad_mode)
        else:
            self.conv1 = nn.Conv3d(
                in_channel, filters[0], 3, 1, 1, bias=False, padding_mode=padding_mode(pad_mode)
            )
        self.bn1 = norm(norm_mode, filters[0], momentum=0.01)
        self.relu = activation(act_mode)
        block = InvertedResidualDilated if dilated else InvertedResidual
        shared: dict[str, Any] = {
            "attention": attention,
            "pad_mode": pad_mode,
            "act_mode": act_mode,
            "norm_mode": norm_mode,
        }
        for i in range(5):
            in_ch = filters[max(0, i - 1)]
            layers = [
                block(in_ch if b == 0 else filters[i], filters[i], ks[i], self.STRIDES[i] if b == 0 else 1,
                      isotropic=isotropy[i], **shared)
                for b in range(blocks[i])
            ]  # fmt: skip
            self.add_module(f"layer{i}", nn.Sequential(*layers))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().stages(self.relu(self.bn1(self.conv1(x))))


class DilatedBlock(nn.Module):
    """PyTC's dilated stem: four 3x3x3 convs with dilations 1, 2, 4, 8, concatenated."""

    def __init__(self, in_channel: int, planes: int, pad_mode: str) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [
                nn.Conv3d(in_channel, planes, 3, 1, d, d, bias=False, padding_mode=padding_mode(pad_mode))
                for d in (1, 2, 4, 8)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.conv], dim=1)
