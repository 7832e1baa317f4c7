"""PyTorch Connectomics' ``UNet3D``, reproduced so that a PyTC checkpoint loads with the same keys.

Layout (PyTC ``connectomics/model/arch/unet.py``, ``block/residual.py``, ``block/basic.py``)::

    conv_in ─ down_layers.0 ─────────────────────────────── up_layers.0 ─ conv_out
                  └ down_layers.1 ─────────────── up_layers.1 ┘
                        └ down_layers.2 ─ ... ─ up_layers.2 ┘
                                  └ down_layers.4 ┘

``down_layers.i`` = Sequential(pooling (Identity), conv3d_norm_act (stride 1 for i == 0, else
(1,2,2) anisotropic / 2 isotropic), BasicBlock3d). ``up_layers.j`` = ModuleList([conv3d_norm_act
(filters[j+1] -> filters[j]), BasicBlock3d]); the coarser map is upsampled trilinearly
(align_corners=True) to the skip's size and *added* to it. Construction order, and so the order in
which the RNG is consumed and the state_dict keys are listed, follows PyTC: conv_in, conv_out,
down_layers, up_layers; then every Conv3d weight gets an orthogonal init.

Faithful detail worth knowing: PyTC builds every residual block with BasicBlock3d's default
``isotropic=False``, so block convolutions are (1,3,3) even in isotropic stages. We do the same;
changing it would change the weight shapes and break PyTC checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelConfigError
from models.sizes import UNET3D_CONFIG_KEYS

Triple = int | tuple[int, int, int]

PadMode = Literal["zeros", "reflect", "replicate", "circular"]
PAD_MODES: tuple[PadMode, ...] = ("zeros", "reflect", "replicate", "circular")

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.2),
    "elu": lambda: nn.ELU(alpha=1.0),
    "gelu": nn.GELU,
    # PyTC's Swish / MemoryEfficientSwish compute x * sigmoid(x) and hold no parameters.
    "swish": nn.SiLU,
    "efficient_swish": nn.SiLU,
    "silu": nn.SiLU,
    "none": nn.Identity,
}

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "bn": lambda c: nn.BatchNorm3d(c, momentum=0.1),
    # PyTC converts to SyncBatchNorm only when wrapping for DDP; the keys are BatchNorm3d's.
    "sync_bn": lambda c: nn.BatchNorm3d(c, momentum=0.1),
    "in": lambda c: nn.InstanceNorm3d(c, momentum=0.1),
    "gn": lambda c: nn.GroupNorm(8, c),
    "none": lambda c: nn.Identity(),
}


def conv3d_norm_act(
    in_planes: int,
    planes: int,
    kernel_size: Triple = (3, 3, 3),
    stride: Triple = 1,
    padding: Triple = (1, 1, 1),
    bias: bool = False,
    pad_mode: str = "replicate",
    norm_mode: str = "bn",
    act_mode: str = "relu",
) -> nn.Sequential:
    """``Sequential(Conv3d, norm, act)``; 'none' gives Identity, so the keys are always ``0/1/2``."""
    conv = nn.Conv3d(
        in_planes,
        planes,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        padding_mode=cast(PadMode, pad_mode),  # checked by UNet3D; Conv3d checks it again
        bias=bias,
    )
    return nn.Sequential(conv, _NORMS[norm_mode](planes), _ACTIVATIONS[act_mode]())


class BasicBlock3d(nn.Module):
    """Residual block: two conv3d_norm_act (the second without activation), plus the input
    (projected by a 1x1 conv3d_norm_act when the shape changes), then the activation."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: Triple = 1,
        projection: bool = False,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        isotropic: bool = False,
    ) -> None:
        super().__init__()
        kernel_size, padding = ((3, 3, 3), (1, 1, 1)) if isotropic else ((1, 3, 3), (0, 1, 1))
        self.conv = nn.Sequential(
            conv3d_norm_act(
                in_planes, planes, kernel_size, stride, padding, False, pad_mode, norm_mode, act_mode
            ),
            conv3d_norm_act(planes, planes, kernel_size, 1, padding, False, pad_mode, norm_mode, "none"),
        )
        self.projector: nn.Module
        if in_planes != planes or stride != 1 or projection:
            # PyTC leaves pad_mode at its default here; with a 1x1 kernel and no padding it is moot.
            self.projector = conv3d_norm_act(
                in_planes, planes, 1, stride, 0, norm_mode=norm_mode, act_mode="none"
            )
        else:
            self.projector = nn.Identity()
        self.act = _ACTIVATIONS[act_mode]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.projector(x))


class UNet3D(nn.Module):
    """3D residual U-Net (PyTC). Strided-conv downsampling; for stride-2 stages 2n+1 sizes halve
    cleanly (17 -> 9 -> 5), any other size works too (the upsampled map is resized to the skip).

    ``in_channels`` / ``out_channels`` are plain attributes so loaders can read them.
    """

    def __init__(
        self,
        in_channel: int = 1,
        out_channel: int = 3,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        is_isotropic: bool = False,
        isotropy: Sequence[bool] = (False, False, False, True, True),
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
        block_type: str = "residual",
    ) -> None:
        super().__init__()
        filters = list(filters)
        isotropy = [True] * len(filters) if is_isotropic else list(isotropy)
        _check_args(in_channel, out_channel, filters, isotropy, pad_mode, act_mode, norm_mode, block_type)
        self.in_channels = in_channel
        self.out_channels = out_channel
        self.depth = len(filters)
        shared: dict[str, Any] = {"pad_mode": pad_mode, "act_mode": act_mode, "norm_mode": norm_mode}

        io_kernel, io_padding = ((5, 5, 5), (2, 2, 2)) if is_isotropic else ((1, 5, 5), (0, 2, 2))
        self.conv_in = conv3d_norm_act(in_channel, filters[0], io_kernel, padding=io_padding, **shared)
        self.conv_out = conv3d_norm_act(
            filters[0],
            out_channel,
            io_kernel,
            padding=io_padding,
            bias=True,
            pad_mode=pad_mode,
            act_mode="none",
            norm_mode="none",
        )

        self.down_layers = nn.ModuleList()
        for i in range(self.depth):
            kernel, padding = _stage_kernel(isotropy[i])
            previous = max(0, i - 1)
            stride: Triple = 1 if i == 0 else (2 if isotropy[i] else (1, 2, 2))
            self.down_layers.append(
                nn.Sequential(
                    nn.Identity(),  # PyTC's pooling slot (max-pooling off): keeps the key indices
                    conv3d_norm_act(filters[previous], filters[i], kernel, stride, padding, **shared),
                    BasicBlock3d(filters[i], filters[i], **shared),
                )
            )

        self.up_layers = nn.ModuleList()
        for j in range(1, self.depth):
            kernel, padding = _stage_kernel(isotropy[j])
            self.up_layers.append(
                nn.ModuleList(
                    [
                        conv3d_norm_act(filters[j], filters[j - 1], kernel, padding=padding, **shared),
                        BasicBlock3d(filters[j - 1], filters[j - 1], **shared),
                    ]
                )
            )

        _orthogonal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        skips: list[torch.Tensor] = []
        for i in range(self.depth - 1):
            x = self.down_layers[i](x)
            skips.append(x)
        x = self.down_layers[-1](x)
        for i in reversed(range(self.depth - 1)):
            conv, block = cast(nn.ModuleList, self.up_layers[i])
            x = block(_upsample_add(conv(x), skips[i]))
        return self.conv_out(x)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # align_corners=True maps the 2n+1 grid's end points onto each other, as PyTC does for strided
    # downsampling; resizing to the skip's exact size makes any input size work.
    x = F.interpolate(x, size=y.shape[2:], mode="trilinear", align_corners=True)
    return x + y


def _stage_kernel(isotropic: bool) -> tuple[Triple, Triple]:
    return ((3, 3, 3), (1, 1, 1)) if isotropic else ((1, 3, 3), (0, 1, 1))


def _orthogonal_init(model: nn.Module) -> None:
    """PyTC's ``ortho_init``: every conv weight orthogonal, drawn from torch's global RNG; biases
    and norm parameters keep their defaults."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d | nn.Linear):
            nn.init.orthogonal_(module.weight)


def _check_args(
    in_channel: int,
    out_channel: int,
    filters: list[int],
    isotropy: list[bool],
    pad_mode: str,
    act_mode: str,
    norm_mode: str,
    block_type: str,
) -> None:
    if in_channel < 1 or out_channel < 1:
        raise ModelConfigError(f"unet3d: channels must be >= 1, got in={in_channel} out={out_channel}")
    if not filters or any(f < 1 for f in filters):
        raise ModelConfigError(f"unet3d: filters must be a non-empty list of positive ints, got {filters}")
    if len(isotropy) != len(filters):
        raise ModelConfigError(
            f"unet3d: isotropy needs one entry per stage ({len(filters)} filters), got {len(isotropy)}"
        )
    for name, value, allowed in (
        ("pad_mode", pad_mode, PAD_MODES),
        ("act_mode", act_mode, tuple(_ACTIVATIONS)),
        ("norm_mode", norm_mode, tuple(_NORMS)),
        ("block_type", block_type, ("residual",)),
    ):
        if value not in allowed:
            raise ModelConfigError(f"unet3d: {name} must be one of {list(allowed)}, got {value!r}")
    if norm_mode == "gn" and any(f % 8 for f in filters):
        raise ModelConfigError(f"unet3d: norm_mode 'gn' (8 groups) needs filters divisible by 8: {filters}")


def build_unet3d(config: Mapping[str, Any]) -> UNet3D:
    """Build a :class:`UNet3D` from a job's ``model.config`` (contract or PyTC key names).

    Unknown keys and badly typed values raise :class:`ModelConfigError` naming the key.
    """
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        target = UNET3D_CONFIG_KEYS.get(key)
        if target is None:
            raise ModelConfigError(f"unet3d: unknown config key {key!r}; known: {sorted(UNET3D_CONFIG_KEYS)}")
        if target in kwargs and kwargs[target] != value:
            raise ModelConfigError(f"unet3d: config key {key!r} contradicts its alias ({kwargs[target]!r})")
        kwargs[target] = _checked_value(key, target, value)
    return UNet3D(**kwargs)


def _checked_value(key: str, target: str, value: Any) -> Any:
    def fail(expected: str) -> ModelConfigError:
        return ModelConfigError(f"unet3d: config key {key!r} must be {expected}, got {value!r}")

    if target in ("in_channel", "out_channel"):
        if not _is_int(value):
            raise fail("an int")
        return int(value)
    if target == "filters":
        if not isinstance(value, list | tuple) or not all(_is_int(v) for v in value):
            raise fail("a list of ints")
        return [int(v) for v in value]
    if target == "isotropy":
        if not isinstance(value, list | tuple) or not all(isinstance(v, bool) for v in value):
            raise fail("a list of booleans")
        return list(value)
    if target == "is_isotropic":
        if not isinstance(value, bool):
            raise fail("a boolean")
        return value
    if not isinstance(value, str):
        raise fail("a string")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ARCHITECTURES: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {"unet3d": build_unet3d}
