"""The small layers every PyTC v1 architecture is made of, written here so that their parameter
names (and so a PyTC checkpoint's state-dict keys) come out as PyTC's do.

What PyTC calls ``conv3d_norm_act`` is ``Sequential(conv, norm, act)``: with a norm or activation
of ``'none'`` the slot holds an ``Identity``, so the keys are always ``.0`` (conv) and ``.1``
(norm). ``norm_act_conv3d`` is the pre-activation order ``Sequential(norm, act, conv)``.
Groups of group norm differ by dimension in PyTC: 8 in 3D, 16 in 2D (and 1D).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from models.errors import ModelConfigError

PadMode = Literal["zeros", "reflect", "replicate", "circular"]
PAD_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")
NORM_MODES: tuple[str, ...] = ("bn", "sync_bn", "in", "gn", "none")
INIT_MODES: tuple[str, ...] = ("xavier", "kaiming", "selu", "orthogonal")


class Swish(nn.Module):
    """``x * sigmoid(x)`` as PyTC's ``Swish`` / ``MemoryEfficientSwish`` compute it (no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.2),
    "elu": lambda: nn.ELU(alpha=1.0),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": Swish,
    "efficient_swish": Swish,
    "none": nn.Identity,
}
ACT_MODES: tuple[str, ...] = tuple(_ACTIVATIONS)


def activation(mode: str) -> nn.Module:
    """PyTC's ``get_activation`` (never in place: the results are the same, nothing is shared)."""
    if mode not in _ACTIVATIONS:
        raise ModelConfigError(f"act_mode must be one of {list(_ACTIVATIONS)}, got {mode!r}")
    return _ACTIVATIONS[mode]()


def norm(mode: str, channels: int, dims: int = 3, momentum: float = 0.1) -> nn.Module:
    """PyTC's ``get_norm_3d`` / ``get_norm_2d`` / ``get_norm_1d``.

    ``sync_bn`` gives a plain batch norm: PyTC's SyncBatchNorm has the same parameters and
    buffers, and on one process (inference) computes the same thing in eval mode.
    """
    if mode not in NORM_MODES:
        raise ModelConfigError(f"norm_mode must be one of {list(NORM_MODES)}, got {mode!r}")
    if mode == "none":
        return nn.Identity()
    if mode == "gn":
        groups = 8 if dims == 3 else 16
        if channels % groups:
            raise ModelConfigError(
                f"norm_mode 'gn' uses {groups} groups in {dims}D and needs channels divisible by it, "
                f"got {channels}"
            )
        return nn.GroupNorm(groups, channels)
    batch = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    instance = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    return (instance if mode == "in" else batch)(channels, momentum=momentum)


def conv_norm_act(
    dims: int,
    in_planes: int,
    planes: int,
    kernel_size: Any = 3,
    stride: Any = 1,
    padding: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    bias: bool = False,
    pad_mode: str = "replicate",
    norm_mode: str = "bn",
    act_mode: str = "relu",
) -> nn.Sequential:
    """PyTC's ``conv2d_norm_act`` (dims 2) / ``conv3d_norm_act`` (dims 3)."""
    conv = _conv(dims, in_planes, planes, kernel_size, stride, padding, dilation, groups, bias, pad_mode)
    return nn.Sequential(conv, norm(norm_mode, planes, dims), activation(act_mode))


def norm_act_conv3d(
    in_planes: int,
    planes: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    *,
    dilation: Any = 1,
    pad_mode: str = "replicate",
    norm_mode: str = "bn",
    act_mode: str = "relu",
) -> nn.Sequential:
    """PyTC's pre-activation ``norm_act_conv3d``: norm over the *input* channels, act, conv."""
    conv = _conv(3, in_planes, planes, kernel_size, stride, padding, dilation, 1, False, pad_mode)
    return nn.Sequential(norm(norm_mode, in_planes, 3), activation(act_mode), conv)


def padding_mode(mode: str) -> PadMode:
    """``mode`` checked as a conv's ``padding_mode``."""
    if mode not in PAD_MODES:
        raise ModelConfigError(f"pad_mode must be one of {list(PAD_MODES)}, got {mode!r}")
    return cast(PadMode, mode)


def _conv(
    dims: int,
    in_planes: int,
    planes: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    bias: bool,
    pad_mode: str,
) -> nn.Module:
    kind = nn.Conv3d if dims == 3 else nn.Conv2d
    return kind(
        in_planes,
        planes,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode(pad_mode),
    )


class SELayer(nn.Module):
    """Squeeze-and-excitation (PyTC's ``SELayer2d`` / ``SELayer3d``): ``fc.0`` and ``fc.2`` Linear."""

    def __init__(self, channel: int, reduction: int, act_mode: str = "relu", dims: int = 3) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d(1) if dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            activation(act_mode),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, *([1] * (x.dim() - 2)))
        return x * y.expand_as(x)


class PoolingAttention3D(nn.Module):
    """PyTC's ``StripPoolingAttention3D`` (``strip``) and ``PlanePoolingAttention3D`` (``plane``):
    three average-pooled views, each convolved, activated and summed; a 1x1x1 conv then gates x."""

    _KERNELS = {
        "strip": (
            ("z", (3, 1, 1), (None, 1, 1)),
            ("y", (1, 3, 1), (1, None, 1)),
            ("x", (1, 1, 3), (1, 1, None)),
        ),
        "plane": (
            ("zy", (3, 3, 1), (None, None, 1)),
            ("yx", (1, 3, 3), (1, None, None)),
            ("xz", (3, 1, 3), (None, 1, None)),
        ),
    }

    def __init__(self, channel: int, kind: str, act_mode: str = "relu") -> None:
        super().__init__()
        self.channel = channel
        reduced = channel // 4
        self._pools: list[tuple[str, tuple[int | None, ...]]] = []
        for name, kernel, pooled in self._KERNELS[kind]:
            padding = cast(tuple[int, int, int], tuple(k // 2 for k in kernel))
            self._pools.append((name, pooled))
            self.add_module(f"conv_{name}", nn.Conv3d(channel, reduced, kernel, padding=padding))
        self.relu = activation(act_mode)
        self.conv1x1x1 = nn.Conv3d(reduced, channel, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        fusion = torch.zeros((), dtype=x.dtype, device=x.device)
        for name, pooled in self._pools:
            view = nn.functional.adaptive_avg_pool3d(x, cast(Any, pooled))
            fusion = fusion + self.relu(getattr(self, f"conv_{name}")(view).expand(-1, -1, *shape[2:]))
        return x * self.conv1x1x1(fusion).sigmoid()


def attention_3d(attention: str | None, channel: int, act_mode: str = "relu") -> nn.Module:
    """PyTC's ``make_att_3d``: any other name (``'none'`` included) is no attention."""
    if attention == "strip_pool":
        return PoolingAttention3D(channel, "strip", act_mode)
    if attention == "plane_pool":
        return PoolingAttention3D(channel, "plane", act_mode)
    if attention == "squeeze_excitation":
        return SELayer(channel, 8, act_mode)
    return nn.Identity()


class NonLocalBlock(nn.Module):
    """PyTC's ``NonLocalBlock2D/3D`` (embedded Gaussian, no sub-sampling, norm layer on W)."""

    def __init__(self, in_channels: int, dims: int, norm_mode: str = "bn") -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.in_channels = in_channels
        self.inter_channels = max(1, in_channels // 2)
        self.g = conv(in_channels, self.inter_channels, 1)
        self.W = nn.Sequential(conv(self.inter_channels, in_channels, 1), norm(norm_mode, in_channels, dims))
        w_norm = self.W[1]
        if isinstance(w_norm, nn.BatchNorm3d | nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(w_norm.weight, 0)
            nn.init.constant_(w_norm.bias, 0)
        self.theta = conv(in_channels, self.inter_channels, 1)
        self.phi = conv(in_channels, self.inter_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi = self.phi(x).view(n, self.inter_channels, -1)
        attention = torch.softmax(torch.matmul(theta, phi), dim=-1)
        y = torch.matmul(attention, g).permute(0, 2, 1).contiguous()
        return self.W(y.view(n, self.inter_channels, *x.shape[2:])) + x


def initialise(model: nn.Module, mode: str) -> None:
    """PyTC's ``model_init``: the weights of every Conv2d/Conv3d/Linear (and for ``xavier``
    their biases), in module order, from torch's global RNG."""
    if mode not in INIT_MODES:
        raise ModelConfigError(f"init_mode must be one of {list(INIT_MODES)}, got {mode!r}")
    for module in model.modules():
        if not isinstance(module, nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        weight = module.weight
        if mode == "orthogonal":
            nn.init.orthogonal_(weight)
        elif mode == "kaiming":
            nn.init.kaiming_normal_(weight, mode="fan_in")
        elif mode == "xavier":
            nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain("relu"))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(weight, 0, math.sqrt(1.0 / module.in_features))
        else:  # PyTC's selu fan-in: two kernel sides times the input channels
            fan_in = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            nn.init.normal_(weight, 0, math.sqrt(1.0 / fan_in))


def slicewise(forward_2d: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A 2D network over (N, C, Z, Y, X) windows, one z slice at a time, as PyTC runs 2D models
    on volumes (its windows have z = 1, squeezed before and restored after the forward): the
    slices become the batch, so z = 1 is exactly PyTC's squeeze."""
    n, c, z, y, x_size = x.shape
    planes = x.permute(0, 2, 1, 3, 4).reshape(n * z, c, y, x_size)
    out = forward_2d(planes)
    return out.reshape(n, z, *out.shape[1:]).permute(0, 2, 1, 3, 4)
