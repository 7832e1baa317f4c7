"""PyTC v1's ``BotNet3D`` backbone (``connectomics/model/backbone/botnet.py``): ResNet stages, the
last one a stack of three bottleneck blocks with multi-head self-attention over the whole feature
map (absolute position embeddings, 4 heads of 32). The attention's map size is fixed when the
model is built (``fmap_size``, PyTC's ``MODEL.INPUT_SIZE``): the network runs on windows of
exactly that size, as in PyTC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from models.errors import ModelConfigError
from models.pytc.backbones import Stages, _stride
from models.pytc.layers import activation, conv_norm_act, padding_mode
from models.pytc.residual import BasicBlock


class AbsPosEmb(nn.Module):
    def __init__(self, fmap_size: Sequence[int], dim_head: int) -> None:
        super().__init__()
        scale = dim_head**-0.5
        self.depth = nn.Parameter(torch.randn(fmap_size[0], dim_head) * scale)
        self.height = nn.Parameter(torch.randn(fmap_size[1], dim_head) * scale)
        self.width = nn.Parameter(torch.randn(fmap_size[2], dim_head) * scale)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        emb = self.depth[:, None, None, :] + self.height[None, :, None, :] + self.width[None, None, :, :]
        return torch.matmul(q, emb.reshape(-1, emb.shape[-1]).t())


class Attention(nn.Module):
    def __init__(self, dim: int, fmap_size: Sequence[int], heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Conv3d(dim, heads * dim_head * 3, 1, bias=False)
        self.pos_emb = AbsPosEmb(fmap_size, dim_head)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = fmap.shape
        # 'b (h d) z y x -> b h (z y x) d' for each of q, k, v
        q, k, v = (
            t.reshape(b, self.heads, self.dim_head, -1).transpose(-1, -2)
            for t in self.to_qkv(fmap).chunk(3, 1)
        )
        q = q * self.scale
        sim = torch.matmul(q, k.transpose(-1, -2)) + self.pos_emb(q)
        out = torch.matmul(sim.softmax(dim=-1), v)
        return out.transpose(-1, -2).reshape(b, self.heads * self.dim_head, d, h, w)


class BottleBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        fmap_size: Sequence[int],
        dim_out: int,
        downsample: bool,
        act: nn.Module,
        pad_mode: str,
    ) -> None:
        super().__init__()
        self.fmap_size = tuple(fmap_size)
        kernel, stride, padding = (3, 2, 1) if downsample else (1, 1, 0)
        self.shortcut: nn.Module = nn.Identity()
        if dim != dim_out or downsample:
            conv = nn.Conv3d(
                dim, dim_out, kernel, stride, padding, bias=False, padding_mode=padding_mode(pad_mode)
            )
            self.shortcut = nn.Sequential(conv, nn.BatchNorm3d(dim_out), act)
        attn_in, heads, dim_head = dim_out // 2, 4, 32
        self.net = nn.Sequential(
            nn.Conv3d(dim, attn_in, 1, bias=False),
            nn.BatchNorm3d(attn_in),
            act,
            Attention(attn_in, fmap_size, heads, dim_head),
            nn.AvgPool3d(kernel, stride, padding) if downsample else nn.Identity(),
            nn.BatchNorm3d(heads * dim_head),
            act,
            nn.Conv3d(heads * dim_head, dim_out, 1, bias=False),
            nn.BatchNorm3d(dim_out),
        )
        nn.init.zeros_(cast(nn.BatchNorm3d, self.net[-1]).weight)
        self.activation = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.fmap_size:
            raise ModelConfigError(
                f"botnet: the attention stage was built for feature maps of {list(self.fmap_size)} "
                f"(fmap_size), got {list(x.shape[2:])}; run windows of the fmap_size the model was built with"
            )
        return self.activation(self.net(x) + self.shortcut(x))


class BotNet3D(Stages):
    """PyTC's ``BotNet3D``."""

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
        fmap_size: Sequence[int] = (17, 129, 129),
        **_: Any,
    ) -> None:
        super().__init__()
        if block_type not in ("residual", "residual_se"):
            raise ModelConfigError(
                f"block_type of the botnet backbone must be residual or residual_se, got {block_type!r}"
            )
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "norm_mode": norm_mode}
        kernel, padding = (5, 2) if isotropy[0] else ((1, 5, 5), (0, 2, 2))
        self.layer0 = conv_norm_act(3, in_channel, filters[0], kernel, 1, padding, **shared)
        for i in range(1, 4):
            stride = _stride(2, isotropy[i])
            layers = [
                BasicBlock(3, filters[i - 1] if b == 0 else filters[i], filters[i], stride if b == 0 else 1,
                           isotropic=isotropy[i], se=block_type == "residual_se", **shared)
                for b in range(blocks[i - 1])
            ]  # fmt: skip
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        size = list(fmap_size)
        for iso in isotropy[1:-1]:
            size = (
                [math.ceil(f / 2) for f in size] if iso else size[:1] + [math.ceil(f / 2) for f in size[1:]]
            )
        act = activation(act_mode)  # one module shared by every block, as in PyTC
        self.layer4 = BottleStack(filters[3], size, filters[4], act)


class BottleStack(nn.Module):
    """Three bottleneck blocks, the first halving every axis (``layer4.net.0-2``)."""

    def __init__(self, dim: int, fmap_size: Sequence[int], dim_out: int, act: nn.Module) -> None:
        super().__init__()
        layers = []
        for i in range(3):
            size = fmap_size if i == 0 else [f // 2 for f in fmap_size]
            layers.append(BottleBlock(dim if i == 0 else dim_out, size, dim_out, i == 0, act, "replicate"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
