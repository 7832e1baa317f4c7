"""PyTC v1's ``FPN3D`` (``connectomics/model/arch/fpn.py``) over its four backbones.

``backbone.layer0-4`` (PyTC wraps the backbone in an ``IntermediateLayerGetter``, which keeps
the backbone's own child names), then ``latlayers.i`` (1x1 conv to ``filters[0]`` channels),
``smooth.i`` and ``conv_out``. Top-down: the coarser map is resized (trilinear, align_corners)
to the next finer one, smoothed, and added; ``smooth.0`` and ``conv_out`` finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelConfigError
from models.pytc.backbones import EfficientNet3D, RepVGG3D, ResNet3D, Stages, repvgg_deploy_state
from models.pytc.botnet import BotNet3D
from models.pytc.layers import conv_norm_act, initialise

BACKBONES: dict[str, type[Stages]] = {
    "resnet": ResNet3D,
    "repvgg": RepVGG3D,
    "botnet": BotNet3D,
    "efficientnet": EfficientNet3D,
}


class FPN3D(nn.Module):
    """PyTC's ``FPN3D``; ``in_channels`` / ``out_channels`` for the loaders."""

    spatial_dims = 3

    def __init__(
        self,
        backbone_type: str = "resnet",
        block_type: str = "residual",
        in_channel: int = 1,
        out_channel: int = 3,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        ks: Sequence[int] = (3, 3, 5, 3, 3),
        blocks: Sequence[int] = (2, 2, 2, 2, 2),
        attn: str | None = "squeeze_excitation",
        is_isotropic: bool = False,
        isotropy: Sequence[bool] = (False, False, False, True, True),
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        init_mode: str = "orthogonal",
        deploy: bool = False,
        fmap_size: Sequence[int] = (17, 129, 129),
    ) -> None:
        super().__init__()
        _check(backbone_type, filters, isotropy, blocks, ks, in_channel, out_channel)
        filters = list(filters)
        iso = [True] * 5 if is_isotropic else list(isotropy)
        self.in_channels, self.out_channels = in_channel, out_channel
        self.deploy = deploy and backbone_type == "repvgg"
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "norm_mode": norm_mode}
        self.backbone = BACKBONES[backbone_type](
            block_type=block_type, in_channel=in_channel, filters=filters, isotropy=iso, blocks=blocks,
            deploy=deploy, fmap_size=fmap_size, ks=ks, attention=attn, **shared,
        )  # fmt: skip
        width = filters[0]
        self.latlayers = nn.ModuleList([conv_norm_act(3, f, width, 1, 1, 0, **shared) for f in filters])
        self.smooth = nn.ModuleList()
        for i in range(5):
            kernel, padding = ((3, 3, 3), (1, 1, 1)) if iso[i] else ((1, 3, 3), (0, 1, 1))
            self.smooth.append(conv_norm_act(3, width, width, kernel, 1, padding, **shared))
        kernel, padding = ((5, 5, 5), (2, 2, 2)) if iso[0] else ((1, 5, 5), (0, 2, 2))
        self.conv_out = conv_norm_act(
            3,
            width,
            out_channel,
            kernel,
            1,
            padding,
            bias=True,
            pad_mode=pad_mode,
            act_mode="none",
            norm_mode="none",
        )
        initialise(self, init_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [lat(f) for lat, f in zip(self.latlayers, self.backbone.stages(x), strict=True)]
        out = features[-1]
        for i in range(4, 0, -1):
            up = F.interpolate(out, size=features[i - 1].shape[2:], mode="trilinear", align_corners=True)
            out = self.smooth[i](up) + features[i - 1]
        return self.conv_out(self.smooth[0](out))

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training checkpoint of a RepVGG backbone folded for a deploy-mode model, as PyTC's
        ``update_state_dict`` does at test time; anything else as it is."""
        if self.deploy and any(".rbr_dense." in key for key in state):
            return repvgg_deploy_state(state)
        return state


def _check(
    backbone_type: str,
    filters: Sequence[int],
    isotropy: Sequence[bool],
    blocks: Sequence[int],
    ks: Sequence[int],
    in_channel: int,
    out_channel: int,
) -> None:
    if backbone_type not in BACKBONES:
        raise ModelConfigError(f"backbone_type must be one of {list(BACKBONES)}, got {backbone_type!r}")
    if len(filters) != 5 or any(f < 1 for f in filters):
        raise ModelConfigError(
            f"fpn_3d needs five positive 'filters' (one per backbone stage), got {list(filters)}"
        )
    if len(isotropy) != 5:
        raise ModelConfigError(f"fpn_3d needs five 'isotropy' entries, got {list(isotropy)}")
    needed = 5 if backbone_type == "efficientnet" else 4
    if len(blocks) < needed or any(b < 1 for b in blocks):
        raise ModelConfigError(
            f"the {backbone_type} backbone needs {needed} positive block counts ('blocks'), "
            f"got {list(blocks)}"
        )
    if backbone_type == "efficientnet" and (len(ks) < 5 or any(k not in (3, 5) for k in ks)):
        raise ModelConfigError(
            f"the efficientnet backbone needs five kernel sizes of 3 or 5 ('ks'), got {list(ks)}"
        )
    if in_channel < 1 or out_channel < 1:
        raise ModelConfigError(
            f"channels must be >= 1, got in_channel={in_channel} out_channel={out_channel}"
        )
