"""PyTC v1's ``UNETR`` (``connectomics/model/arch/unetr.py``), assembled from MONAI's blocks as
PyTC assembles it, so the keys are ``vit.*``, ``encoder1-4``, ``decoder2-5`` and ``out`` with
MONAI's names inside. MONAI is therefore needed at run time for this architecture (the
``transformers`` extra); it is imported only when a UNETR is built.

PyTC's own differences from MONAI's UNETR: for anisotropic data (``is_isotropic`` false) the ViT's
patch is a quarter as deep (``patch_size[0] // 4``) and upsampling is (1, 2, 2) where the patch
grid is coarser in xy only; the finest encoder/decoder convs are (1, 3, 3); ``encoder2`` is two
up-blocks in a Sequential. The ViT has 12 layers. PyTC passes ``pos_embed`` to MONAI's ViT, which
MONAI >= 1.4 calls ``proj_type``; the layers and keys are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.errors import ModelConfigError


class UNETR(nn.Module):
    spatial_dims = 3

    def __init__(
        self,
        in_channel: int = 1,
        out_channel: int = 3,
        img_size: Sequence[int] | int = (64, 128, 128),
        patch_size: Sequence[int] | int = (16, 16, 16),
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        pos_embed: str = "conv",
        norm_name: Any = "instance",
        is_isotropic: bool = False,
        conv_block: bool = True,
        res_block: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        try:
            from monai.networks.blocks.dynunet_block import UnetOutBlock
            from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
            from monai.networks.nets.vit import ViT
        except ImportError as exc:
            raise ModelConfigError(
                "unetr is built from MONAI's blocks: install the 'transformers' extra (monai, einops)"
            ) from exc

        img = _triple(img_size)
        patch = _triple(patch_size)
        _check(img, patch, hidden_size, num_heads, pos_embed, dropout_rate, is_isotropic)
        up: Any = 2
        if not is_isotropic:
            patch, up = (patch[0] // 4, patch[1], patch[2]), (1, 2, 2)
        self.in_channels, self.out_channels = in_channel, out_channel
        self.feat_size = tuple(i // p for i, p in zip(img, patch, strict=True))
        self.hidden_size = hidden_size
        self.vit = ViT(
            in_channels=in_channel, img_size=img, patch_size=patch, hidden_size=hidden_size, mlp_dim=mlp_dim,
            num_layers=12, num_heads=num_heads, proj_type=pos_embed, classification=False,
            dropout_rate=dropout_rate, spatial_dims=3, qkv_bias=qkv_bias,
        )  # fmt: skip
        f = feature_size
        shared: dict[str, Any] = {"spatial_dims": 3, "norm_name": norm_name, "res_block": res_block}
        pr = {**shared, "kernel_size": 3, "stride": 1, "conv_block": conv_block}
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_channel, out_channels=f, kernel_size=(1, 3, 3), stride=1, **shared
        )
        self.encoder2 = nn.Sequential(
            UnetrPrUpBlock(
                in_channels=hidden_size, out_channels=f * 2, num_layer=1, upsample_kernel_size=up, **pr
            ),
            UnetrPrUpBlock(in_channels=f * 2, out_channels=f * 2, num_layer=0, upsample_kernel_size=2, **pr),
        )
        self.encoder3 = UnetrPrUpBlock(
            in_channels=hidden_size, out_channels=f * 4, num_layer=1, upsample_kernel_size=up, **pr
        )
        self.encoder4 = UnetrPrUpBlock(
            in_channels=hidden_size, out_channels=f * 8, num_layer=0, upsample_kernel_size=up, **pr
        )
        self.decoder5 = UnetrUpBlock(
            in_channels=hidden_size, out_channels=f * 8, kernel_size=3, upsample_kernel_size=up, **shared
        )
        self.decoder4 = UnetrUpBlock(
            in_channels=f * 8, out_channels=f * 4, kernel_size=3, upsample_kernel_size=up, **shared
        )
        self.decoder3 = UnetrUpBlock(
            in_channels=f * 4, out_channels=f * 2, kernel_size=3, upsample_kernel_size=2, **shared
        )
        self.decoder2 = UnetrUpBlock(
            in_channels=f * 2, out_channels=f, kernel_size=(1, 3, 3), upsample_kernel_size=2, **shared
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channel)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, L, hidden) back to a (N, hidden, z, y, x) map."""
        return x.view(x.shape[0], *self.feat_size, self.hidden_size).permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x, hidden = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self._grid(hidden[3]))
        enc3 = self.encoder3(self._grid(hidden[6]))
        enc4 = self.encoder4(self._grid(hidden[9]))
        dec3 = self.decoder5(self._grid(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))


def _triple(value: Sequence[int] | int) -> tuple[int, int, int]:
    values = [value] * 3 if isinstance(value, int) else list(value)
    if len(values) != 3:
        raise ModelConfigError(f"unetr: sizes need three values (z, y, x), got {value!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _check(
    img: tuple[int, ...],
    patch: tuple[int, ...],
    hidden: int,
    heads: int,
    pos_embed: str,
    dropout: float,
    iso: bool,
) -> None:
    if not 0 <= dropout <= 1:
        raise ModelConfigError(f"unetr: dropout_rate must be within [0, 1], got {dropout}")
    if heads < 1 or hidden % heads:
        raise ModelConfigError(f"unetr: hidden_size ({hidden}) must be a multiple of num_heads ({heads})")
    if pos_embed not in ("conv", "perceptron"):
        raise ModelConfigError(f"unetr: pos_embed must be 'conv' or 'perceptron', got {pos_embed!r}")
    grid = patch if iso else (patch[0] // 4, patch[1], patch[2])
    if any(p < 1 or i % p for i, p in zip(img, grid, strict=True)):
        raise ModelConfigError(
            f"unetr: img_size {list(img)} must be a multiple of the ViT patch {list(grid)}"
        )
