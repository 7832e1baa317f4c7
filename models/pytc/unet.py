"""PyTC v1's U-Nets (``connectomics/model/arch/unet.py``): ``unet_3d``, ``unet_plus_3d``,
``unet_2d`` and ``unet_plus_2d``, with PyTC's state-dict keys and construction order.

Layout (both dimensions)::

    conv_in ─ down_layers.0 ─────────────────────────── up_layers.0 ─ conv_out
                  └ down_layers.1 ─────────── up_layers.1 ┘
                        └ ... down_layers.{depth-1} ┘

``down_layers.i`` = Sequential(max-pool or Identity, conv_norm_act (strided when not pooling),
block); ``up_layers.j`` = ModuleList([conv_norm_act filters[j+1] -> filters[j], block]). The coarser
map is resized to the skip's size and added (align_corners True when downsampling by stride, False
with max-pooling). The ``plus`` variants add a non-local block at the bottom and ``feat_layers``
(1x1 convs from the bottom map) added at every level; they are built after PyTC's weight init,
so they keep torch's default init, as in PyTC.

PyTC builds every block with ``isotropic=False`` (``(1, 3, 3)`` kernels even in isotropic stages);
so do we: anything else would change the weight shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelConfigError
from models.pytc.layers import NonLocalBlock, conv_norm_act, initialise, slicewise
from models.pytc.residual import BLOCK_TYPES_2D, BLOCK_TYPES_3D, residual_block


class UNet(nn.Module):
    """PyTC's ``UNet3D`` (dims 3) and ``UNet2D`` (dims 2); ``plus`` gives ``UNetPlus3D/2D``.

    ``in_channels`` / ``out_channels`` are plain attributes so loaders can read them; ``spatial_dims``
    tells the engine a 2D model wants (N, C, Y, X) windows.
    """

    def __init__(
        self,
        dims: int,
        *,
        plus: bool = False,
        block_type: str = "residual",
        in_channel: int = 1,
        out_channel: int = 3,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        is_isotropic: bool = False,
        isotropy: Sequence[bool] = (False, False, False, True, True),
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        init_mode: str = "orthogonal",
        pooling: bool = False,
    ) -> None:
        super().__init__()
        filters = list(filters)
        _check(dims, block_type, in_channel, out_channel, filters, isotropy, is_isotropic)
        self.spatial_dims = dims
        self.in_channels, self.out_channels = in_channel, out_channel
        self.depth = len(filters)
        self.pooling = pooling
        iso = [True] * self.depth if (is_isotropic or dims == 2) else list(isotropy)
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "norm_mode": norm_mode}

        io_kernel, io_pad = _kernel(dims, is_isotropic or dims == 2, io=True)
        self.conv_in = conv_norm_act(dims, in_channel, filters[0], io_kernel, 1, io_pad, **shared)
        self.conv_out = conv_norm_act(
            dims, filters[0], out_channel, io_kernel, 1, io_pad, bias=True, pad_mode=pad_mode,
            act_mode="none", norm_mode="none",
        )  # fmt: skip

        self.down_layers = nn.ModuleList()
        for i in range(self.depth):
            kernel, padding = _kernel(dims, iso[i])
            previous = max(0, i - 1)
            down = _downsample(dims, iso[i]) if i > 0 else 1
            stride = 1 if pooling else down
            pool: nn.Module = nn.Identity()
            if pooling and i > 0:
                pool = nn.MaxPool3d(down, down) if dims == 3 else nn.MaxPool2d(down, down)
            self.down_layers.append(
                nn.Sequential(
                    pool,
                    conv_norm_act(dims, filters[previous], filters[i], kernel, stride, padding, **shared),
                    residual_block(dims, block_type, filters[i], filters[i], **shared),
                )
            )

        self.up_layers = nn.ModuleList()
        for j in range(1, self.depth):
            kernel, padding = _kernel(dims, iso[j])
            self.up_layers.append(
                nn.ModuleList(
                    [
                        conv_norm_act(dims, filters[j], filters[j - 1], kernel, 1, padding, **shared),
                        residual_block(dims, block_type, filters[j - 1], filters[j - 1], **shared),
                    ]
                )
            )
        initialise(self, init_mode)

        self.plus = plus
        if plus:
            # PyTC leaves these 1x1 convs at conv_norm_act's default padding of 1: each grows the
            # bottom map by one voxel per side (padded as pad_mode says) before it is resized.
            self.feat_layers = nn.ModuleList(
                [
                    conv_norm_act(dims, filters[-1], filters[k - 1], 1, 1, 1, **shared)
                    for k in range(1, self.depth)
                ]
            )
            self.non_local = NonLocalBlock(filters[-1], dims, norm_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 2 and x.dim() == 5:
            return slicewise(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        skips: list[torch.Tensor] = []
        for i in range(self.depth - 1):
            x = self.down_layers[i](x)
            skips.append(x)
        x = self.down_layers[-1](x)
        if self.plus:
            x = self.non_local(x)
        bottom = x
        for i in reversed(range(self.depth - 1)):
            conv, block = cast(nn.ModuleList, self.up_layers[i])
            x = self._upsample_add(conv(x), skips[i])
            if self.plus:
                x = self._upsample_add(self.feat_layers[i](bottom), x)
            x = block(x)
        return self.conv_out(x)

    def _upsample_add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        return F.interpolate(x, size=y.shape[2:], mode=mode, align_corners=not self.pooling) + y


def _kernel(dims: int, isotropic: bool, io: bool = False) -> tuple[Any, Any]:
    size, pad = (5, 2) if io else (3, 1)
    if dims == 2:
        return size, pad
    if isotropic:
        return (size,) * 3, (pad,) * 3
    return (1, size, size), (0, pad, pad)


def _downsample(dims: int, isotropic: bool) -> Any:
    return 2 if (dims == 2 or isotropic) else (1, 2, 2)


def _check(
    dims: int,
    block_type: str,
    in_channel: int,
    out_channel: int,
    filters: list[int],
    isotropy: Sequence[bool],
    is_isotropic: bool,
) -> None:
    allowed = BLOCK_TYPES_3D if dims == 3 else BLOCK_TYPES_2D
    if block_type not in allowed:
        raise ModelConfigError(f"block_type must be one of {list(allowed)} in {dims}D, got {block_type!r}")
    if in_channel < 1 or out_channel < 1:
        raise ModelConfigError(
            f"channels must be >= 1, got in_channel={in_channel} out_channel={out_channel}"
        )
    if not filters or any(f < 1 for f in filters):
        raise ModelConfigError(f"filters must be a non-empty list of positive ints, got {filters}")
    if dims == 3 and not is_isotropic and len(isotropy) != len(filters):
        raise ModelConfigError(
            f"isotropy needs one entry per stage ({len(filters)} filters), got {len(isotropy)}"
        )
