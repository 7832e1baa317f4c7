"""How large a built-in network would be, from its config alone, without torch and without building it.

A job's ``model.config`` can ask for a network of any size (``in_channels: 10^12``, ``filters`` of
768 channels at every stage); building it first would take the worker's memory and minutes before
anything could refuse it. The count here follows the layers :mod:`models.unet3d` builds
(convolution weights, biases and norm parameters), so the control plane (which never imports torch)
bounds it before a worker sees the job. A config this module cannot read (a value of the wrong type)
gives None: the builder names the problem then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# unet3d's config keys: the contract's names first, PyTC's spellings as aliases (models.unet3d uses them).
UNET3D_CONFIG_KEYS: dict[str, str] = {
    "in_channels": "in_channel",
    "in_channel": "in_channel",
    "out_channels": "out_channel",
    "out_channel": "out_channel",
    "filters": "filters",
    "is_isotropic": "is_isotropic",
    "isotropy": "isotropy",
    "pad_mode": "pad_mode",
    "act_mode": "act_mode",
    "norm_mode": "norm_mode",
    "block_type": "block_type",
}

_UNET3D_DEFAULTS: dict[str, Any] = {
    "in_channel": 1,
    "out_channel": 3,
    "filters": (28, 36, 48, 64, 80),
    "is_isotropic": False,
    "isotropy": (False, False, False, True, True),
}


def architecture_parameters(architecture: str | None, config: Mapping[str, Any]) -> int | None:
    """The parameter count of the built-in ``architecture`` built from ``config``; None when the
    architecture is not one this module knows or the config cannot be read."""
    if architecture in ("unet3d", "unet_3d") and config.get("block_type", "residual") == "residual":
        return unet3d_parameters(config)
    return None  # the other PyTC architectures are counted on the meta device by the workers


def unet3d_parameters(config: Mapping[str, Any]) -> int | None:
    """Weights of :class:`models.unet3d.UNet3D` for ``config`` (exact for the default norm)."""
    values = dict(_UNET3D_DEFAULTS)
    for key, value in config.items():
        if key in UNET3D_CONFIG_KEYS:
            values[UNET3D_CONFIG_KEYS[key]] = value
    c_in, c_out, filters = values["in_channel"], values["out_channel"], values["filters"]
    if not (_is_int(c_in) and _is_int(c_out) and isinstance(filters, list | tuple) and filters):
        return None
    if not all(_is_int(f) and f > 0 for f in filters) or c_in < 1 or c_out < 1:
        return None
    isotropy = [True] * len(filters) if values["is_isotropic"] is True else values["isotropy"]
    if not isinstance(isotropy, list | tuple) or len(isotropy) != len(filters):
        return None
    io_kernel = 125 if values["is_isotropic"] is True else 25
    f = [int(x) for x in filters]
    total = _conv(c_in, f[0], io_kernel) + c_out * f[0] * io_kernel + c_out  # conv_in; conv_out (bias)
    for i, iso in enumerate(isotropy):
        total += _conv(f[max(0, i - 1)], f[i], 27 if iso else 9) + _block(f[i])
    for j in range(1, len(f)):
        total += _conv(f[j], f[j - 1], 27 if isotropy[j] else 9) + _block(f[j - 1])
    return total


def _conv(c_in: int, c_out: int, kernel: int) -> int:
    """A conv3d_norm_act: weights without bias, and a norm's weight and bias."""
    return c_in * c_out * kernel + 2 * c_out


def _block(planes: int) -> int:
    """BasicBlock3d(planes, planes): two (1, 3, 3) convs with their norms, no projector."""
    return 2 * _conv(planes, planes, 9)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
