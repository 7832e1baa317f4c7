"""PyTC v1's ``SwinUNETR`` (``connectomics/model/arch/swinunetr.py``): MONAI's Swin UNETR with an
anisotropic option, built from MONAI's blocks (Swin stages, patch embedding, UNETR blocks) with
PyTC's changes written here, so the keys are PyTC's: ``swinViT.patch_embed``,
``swinViT.layers1-4.0`` (and ``layers1c-4c`` with ``use_v2``), ``encoder1-6``, ``decoder1-5``,
``out``. MONAI (and einops, which its Swin stages use) is needed at run time: the
``transformers`` extra.

PyTC's changes: for anisotropic data (``is_isotropic`` false) the patch is (1, 2, 2), the window
(3, 7, 7), a stage marked not isotropic in ``isotropy`` merges patches in y and x only (4 * dim
features instead of 8 * dim), and the up-sampling kernels are (1, 2, 2) where z was not merged;
the finest encoder/decoder convs are (1, 3, 3).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelConfigError


class PatchMerging(nn.Module):
    """MONAI's patch merging (``merging``: v0.9.0's order, ``mergingv2``: the product order) with
    PyTC's ``merge_z``: False merges 2x2 patches in y and x only."""

    def __init__(
        self, dim: int, norm_layer: Any = nn.LayerNorm, spatial_dims: int = 3, *, merge_z: bool, v2: bool
    ) -> None:
        super().__init__()
        factor = 8 if spatial_dims == 3 and merge_z else 4
        if factor == 8:  # PyTC (as MONAI) first builds the 2D-sized layer, then replaces it: same draws
            nn.Linear(4 * dim, 2 * dim, bias=False)
        self.reduction = nn.Linear(factor * dim, 2 * dim, bias=False)
        self.norm = norm_layer(factor * dim)
        self.merge_z, self.v2 = merge_z, v2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        if not self.merge_z:
            parts = [x[:, :, i::2, j::2, :] for i, j in itertools.product(range(2), range(2))]
        elif self.v2:
            parts = [x[:, i::2, j::2, k::2, :] for i, j, k in itertools.product(range(2), range(2), range(2))]
        else:  # v0.9.0's order
            order = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 0), (0, 1, 1), (1, 1, 1))
            parts = [x[:, i::2, j::2, k::2, :] for i, j, k in order]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class SwinTransformer(nn.Module):
    """The Swin encoder: patch embedding, then four stages, each feature map layer-normalised."""

    def __init__(
        self, in_chans: int, embed_dim: int, window: Sequence[int], patch: Sequence[int],
        depths: Sequence[int], num_heads: Sequence[int], drops: tuple[float, float, float],
        isotropy: Sequence[bool], v2_merging: bool, use_v2: bool, use_checkpoint: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        from monai.networks.blocks import PatchEmbed, UnetrBasicBlock
        from monai.networks.nets.swin_unetr import BasicLayer

        drop_rate, attn_drop_rate, drop_path_rate = drops
        no_norm: Any = None  # PyTC's patch_norm is off
        self.patch_embed = PatchEmbed(
            patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, norm_layer=no_norm, spatial_dims=3
        )
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.use_v2 = use_v2
        for i in range(4):
            self.add_module(f"layers{i + 1}", nn.ModuleList())
        if use_v2:
            for i in range(4):
                self.add_module(f"layers{i + 1}c", nn.ModuleList())
        for i in range(4):
            merging = functools.partial(PatchMerging, merge_z=isotropy[i], v2=v2_merging)
            layer = BasicLayer(
                dim=embed_dim * 2**i, depth=depths[i], num_heads=num_heads[i], window_size=window,
                drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])], mlp_ratio=4.0, qkv_bias=True,
                drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=nn.LayerNorm, downsample=merging,  # type: ignore[arg-type]
                use_checkpoint=use_checkpoint,
            )  # fmt: skip
            getattr(self, f"layers{i + 1}").append(layer)
            if use_v2:
                width = embed_dim * 2**i
                block = UnetrBasicBlock(
                    spatial_dims=3, in_channels=width, out_channels=width, kernel_size=3, stride=1,
                    norm_name="instance", res_block=True,
                )  # fmt: skip
                getattr(self, f"layers{i + 1}c").append(block)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        outs = [_layer_norm(x, normalize)]
        for i in range(1, 5):
            if self.use_v2:
                x = getattr(self, f"layers{i}c")[0](x.contiguous())
            x = getattr(self, f"layers{i}")[0](x.contiguous())
            outs.append(_layer_norm(x, normalize))
        return outs


def _layer_norm(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """PyTC's ``proj_out``: a layer norm over channels, without weights."""
    if not normalize:
        return x
    return F.layer_norm(x.movedim(1, -1), [x.shape[1]]).movedim(-1, 1)


class SwinUNETR(nn.Module):
    spatial_dims = 3
    encoder6: nn.Module  # encoder2-6 are added in a loop

    def __init__(
        self,
        img_size: Sequence[int] | int = (64, 128, 128),
        in_channel: int = 1,
        out_channel: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        feature_size: int = 24,
        norm_name: Any = "instance",
        is_isotropic: bool = False,
        isotropy: Sequence[bool] = (False, True, True, True),
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        downsample: str = "merging",
        use_v2: bool = False,
    ) -> None:
        super().__init__()
        try:
            from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
        except ImportError as exc:
            raise ModelConfigError(
                "swinunetr is built from MONAI's blocks: install the 'transformers' extra"
            ) from exc
        img = [img_size] * 3 if isinstance(img_size, int) else list(img_size)
        if is_isotropic:
            isotropy, patch, window = [True] * len(depths), (2, 2, 2), (7, 7, 7)
            up: list[Any] = [2] * (len(depths) + 1)
        else:
            isotropy, patch, window = list(isotropy), (1, 2, 2), (3, 7, 7)
            up = [(1, 2, 2)] * (isotropy.count(False) + 1) + [2] * isotropy.count(True)
        _check(
            img,
            patch,
            feature_size,
            depths,
            num_heads,
            isotropy,
            downsample,
            (drop_rate, attn_drop_rate, dropout_path_rate),
        )
        self.in_channels, self.out_channels, self.normalize = in_channel, out_channel, normalize
        f = feature_size
        self.swinViT = SwinTransformer(
            in_channel, f, window, patch, depths, num_heads, (drop_rate, attn_drop_rate, dropout_path_rate),
            isotropy, downsample == "mergingv2", use_v2, use_checkpoint,
        )  # fmt: skip
        basic = {"spatial_dims": 3, "stride": 1, "norm_name": norm_name, "res_block": True}
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_channel, out_channels=f, kernel_size=(1, 3, 3), **basic
        )
        for i, width in enumerate((f, 2 * f, 4 * f, 8 * f, 16 * f)):
            self.add_module(
                f"encoder{i + 2}",
                UnetrBasicBlock(in_channels=width, out_channels=width, kernel_size=3, **basic),
            )
        upb = {"spatial_dims": 3, "norm_name": norm_name, "res_block": True}
        for i, (cin, cout) in zip(
            (5, 4, 3, 2), ((16 * f, 8 * f), (8 * f, 4 * f), (4 * f, 2 * f), (2 * f, f)), strict=True
        ):
            block = UnetrUpBlock(
                in_channels=cin, out_channels=cout, kernel_size=3, upsample_kernel_size=up[i - 1], **upb
            )
            self.add_module(f"decoder{i}", block)
        self.decoder1 = UnetrUpBlock(
            in_channels=f, out_channels=f, kernel_size=(1, 3, 3), upsample_kernel_size=up[0], **upb
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channel)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        hidden = self.swinViT(x_in, self.normalize)
        enc = [self.encoder1(x_in), *(getattr(self, f"encoder{i + 2}")(hidden[i]) for i in range(4))]
        dec = self.encoder6(hidden[4])
        for i in (5, 4, 3, 2):
            dec = getattr(self, f"decoder{i}")(dec, enc[i - 1])
        return self.out(self.decoder1(dec, enc[0]))


def _check(
    img: list[int], patch: tuple[int, ...], feature_size: int, depths: Sequence[int], heads: Sequence[int],
    isotropy: Sequence[bool], downsample: str, drops: tuple[float, float, float],
) -> None:  # fmt: skip
    if len(img) != 3 or any(m % p**5 for m, p in zip(img, patch, strict=True)):
        raise ModelConfigError(
            f"swinunetr: img_size {img} must be divisible by {[p**5 for p in patch]} (patch**5)"
        )
    if feature_size % 12:
        raise ModelConfigError(f"swinunetr: feature_size must be a multiple of 12, got {feature_size}")
    if len(depths) != 4 or len(heads) != 4 or len(isotropy) != 4:
        raise ModelConfigError(
            f"swinunetr: depths, num_heads and isotropy need four stages, got {depths} {heads} {isotropy}"
        )
    if downsample not in ("merging", "mergingv2"):
        raise ModelConfigError(f"swinunetr: downsample must be 'merging' or 'mergingv2', got {downsample!r}")
    if any(not 0 <= d <= 1 for d in drops):
        raise ModelConfigError(f"swinunetr: dropout rates must be within [0, 1], got {list(drops)}")
