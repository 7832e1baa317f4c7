"""PyTC v1's residual blocks (``connectomics/model/block/residual.py``), with its parameter names.

``BasicBlock``: ``conv = Sequential(conv_norm_act, conv_norm(no act))``, plus the input (through a
1x1 ``projector`` when the shape changes), then ``act``. The ``_se`` variants wrap ``conv`` as
``Sequential(conv, SELayer)`` (keys ``conv.0.*``, ``conv.1.fc.*``) and default to ReLU. The
pre-activation (``_pa``) variant runs ``norm, act, conv`` twice and has no final activation.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from models.pytc.layers import (
    SELayer,
    activation,
    attention_3d,
    conv_norm_act,
    norm,
    norm_act_conv3d,
    padding_mode,
)


def _kernel(dims: int, isotropic: bool, dilation: int) -> tuple[Any, Any]:
    if dims == 2 or isotropic:
        return 3, dilation
    return (1, 3, 3), (0, dilation, dilation)


class BasicBlock(nn.Module):
    """PyTC's ``BasicBlock2d`` / ``BasicBlock3d`` (``se`` adds the squeeze-excitation layer)."""

    def __init__(
        self,
        dims: int,
        in_planes: int,
        planes: int,
        stride: Any = 1,
        *,
        dilation: int = 1,
        projection: bool = False,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        isotropic: bool = False,
        se: bool = False,
    ) -> None:
        super().__init__()
        kernel, padding = _kernel(dims, isotropic, dilation)
        shared: dict[str, Any] = {"dilation": dilation, "pad_mode": pad_mode, "norm_mode": norm_mode}
        conv: nn.Module = nn.Sequential(
            conv_norm_act(dims, in_planes, planes, kernel, stride, padding, act_mode=act_mode, **shared),
            conv_norm_act(dims, planes, planes, kernel, 1, padding, act_mode="none", **shared),
        )
        self.conv = conv
        self.projector: nn.Module = nn.Identity()
        if in_planes != planes or stride != 1 or projection:
            # PyTC leaves pad_mode at its default here; with a 1x1 kernel and no padding it is moot.
            self.projector = conv_norm_act(
                dims, in_planes, planes, 1, stride, 0, norm_mode=norm_mode, act_mode="none"
            )
        self.act = activation(act_mode)
        if se:  # built after the rest, as PyTC's subclasses do (the RNG is consumed in that order)
            reduction = 4 if dims == 3 else 16
            self.conv = nn.Sequential(conv, SELayer(planes, reduction, act_mode, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.projector(x))


class BasicBlock3dPA(nn.Module):
    """PyTC's pre-activation ``BasicBlock3dPA`` (``se``: ``BasicBlock3dPASE``)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: Any = 1,
        *,
        dilation: int = 1,
        projection: bool = False,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        isotropic: bool = False,
        se: bool = False,
    ) -> None:
        super().__init__()
        kernel, padding = _kernel(3, isotropic, dilation)
        shared: dict[str, Any] = {
            "dilation": dilation,
            "pad_mode": pad_mode,
            "norm_mode": norm_mode,
            "act_mode": act_mode,
        }
        conv: nn.Module = nn.Sequential(
            norm_act_conv3d(in_planes, planes, kernel, stride, padding, **shared),
            norm_act_conv3d(planes, planes, kernel, 1, padding, **shared),
        )
        self.conv = conv
        self.projector: nn.Module = nn.Identity()
        if in_planes != planes or stride != 1 or projection:
            self.projector = conv_norm_act(
                3, in_planes, planes, 1, stride, 0, norm_mode=norm_mode, act_mode="none"
            )
        if se:
            self.conv = nn.Sequential(conv, SELayer(planes, 4, act_mode, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.projector(x)


BLOCK_TYPES_3D: tuple[str, ...] = ("residual", "residual_pa", "residual_se", "residual_se_pa")
BLOCK_TYPES_2D: tuple[str, ...] = ("residual", "residual_se")


def residual_block(dims: int, block_type: str, in_planes: int, planes: int, **kwargs: Any) -> nn.Module:
    """The block ``block_type`` names; SE variants default to ReLU as in PyTC, others to ELU."""
    if block_type.endswith("_pa"):
        return BasicBlock3dPA(in_planes, planes, se="_se" in block_type, **kwargs)
    return BasicBlock(dims, in_planes, planes, se=block_type == "residual_se", **kwargs)


class InvertedResidual(nn.Module):
    """PyTC's ``InvertedResidual`` (EfficientNet3D): 1x1 expand, depth-wise conv, attention, 1x1
    project; the input (average-pooled and projected when strided) is added."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: Any,
        *,
        expansion_factor: int = 1,
        attention: str | None = None,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        isotropic: bool = False,
    ) -> None:
        super().__init__()
        mid = in_ch * expansion_factor
        depthwise = _depthwise(mid, kernel_size, stride, 1, isotropic, pad_mode)
        self.layers1 = nn.Sequential(
            nn.Conv3d(in_ch, mid, 1, bias=False),
            norm(norm_mode, mid),
            activation(act_mode),
            depthwise,
            norm(norm_mode, mid),
            activation(act_mode),
        )
        self.layers2 = nn.Sequential(nn.Conv3d(mid, out_ch, 1, bias=False), norm(norm_mode, out_ch))
        self.attention = attention_3d(attention, mid)
        self.projector: nn.Module = nn.Identity()
        if depthwise.stride != (1, 1, 1):
            pool = nn.AvgPool3d(cast(Any, depthwise.stride), cast(Any, depthwise.stride))
            self.projector = nn.Sequential(pool, _projector(in_ch, out_ch, norm_mode))
        elif in_ch != out_ch:
            self.projector = _projector(in_ch, out_ch, norm_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers2(self.attention(self.layers1(x)))
        return out + self.projector(_grown(x, out))


def _projector(in_ch: int, out_ch: int, norm_mode: str) -> nn.Sequential:
    return conv_norm_act(3, in_ch, out_ch, 1, 1, 0, norm_mode=norm_mode, act_mode="none")


class InvertedResidualDilated(nn.Module):
    """PyTC's ``InvertedResidualDilated``: as :class:`InvertedResidual`, the depth-wise conv split
    into four channel groups with dilations 1, 2, 4 and 8 (``DWConv.0-3``)."""

    DILATIONS = (1, 2, 4, 8)

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: Any,
        *,
        expansion_factor: int = 1,
        attention: str | None = None,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        isotropic: bool = True,
    ) -> None:
        super().__init__()
        mid = in_ch * expansion_factor
        self.DWConv = nn.ModuleList(
            [_depthwise(mid // 4, kernel_size, stride, d, isotropic, pad_mode) for d in self.DILATIONS]
        )
        self.layers1_a = nn.Sequential(
            nn.Conv3d(in_ch, mid, 1, bias=False), norm(norm_mode, mid), activation(act_mode)
        )
        self.layers1_b = nn.Sequential(norm(norm_mode, mid), activation(act_mode))
        self.layers2 = nn.Sequential(nn.Conv3d(mid, out_ch, 1, bias=False), norm(norm_mode, out_ch))
        self.attention = attention_3d(attention, mid)
        self.projector: nn.Module = nn.Identity()
        dw_stride = cast(nn.Conv3d, self.DWConv[0]).stride
        if dw_stride != (1, 1, 1):
            self.projector = nn.Sequential(
                nn.AvgPool3d(cast(Any, dw_stride), cast(Any, dw_stride)), _projector(in_ch, out_ch, norm_mode)
            )
        elif in_ch != out_ch:
            self.projector = _projector(in_ch, out_ch, norm_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers1_a(x)
        parts = torch.split(out, out.shape[1] // len(self.DILATIONS), dim=1)
        out = torch.cat([conv(part) for conv, part in zip(self.DWConv, parts, strict=False)], dim=1)
        out = self.layers2(self.attention(self.layers1_b(out)))
        return out + self.projector(_grown(x, out))


def _depthwise(
    channels: int, kernel: int, stride: Any, dilation: int, isotropic: bool, pad_mode: str
) -> nn.Conv3d:
    """PyTC's ``dwconvkxkxk`` (isotropic) / ``dwconv1xkxk``."""
    pad = ((kernel - 1) * dilation) // 2
    if isotropic:
        return nn.Conv3d(
            channels, channels, kernel, stride, pad, dilation, groups=channels, bias=False,
            padding_mode=padding_mode(pad_mode),
        )  # fmt: skip
    stride = (1, stride, stride) if isinstance(stride, int) else stride
    return nn.Conv3d(
        channels, channels, (1, kernel, kernel), stride, (0, pad, pad), (1, dilation, dilation),
        groups=channels, bias=False, padding_mode=padding_mode(pad_mode),
    )  # fmt: skip


def _grown(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """PyTC pads the shortcut's input by one voxel each side (replicate) on each odd axis where
    the block's output size differs from its input's."""
    if out.shape[2:] == x.shape[2:]:
        return x
    pad: list[int] = []
    for axis in (4, 3, 2):  # F.pad takes the last axis first
        grow = out.shape[axis] != x.shape[axis] and x.shape[axis] % 2 == 1
        pad += [1, 1] if grow else [0, 0]
    return nn.functional.pad(x, pad, mode="replicate")
