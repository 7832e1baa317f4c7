"""The built-in architectures by name: PyTC v1's ``MODEL.ARCHITECTURE`` strings, and ``unet3d``.

A job's ``model.config`` holds the keyword arguments PyTC's ``build_model`` passes
(``connectomics/model/build.py``: ``block_type, in_channel, out_channel, filters, ks, blocks,
attn, is_isotropic, isotropy, pad_mode, act_mode, norm_mode, pooling, return_feats`` and the
architecture's own), plus the class options it leaves at their defaults (``init_mode``). PyTC
passes every common key to every architecture, which ignores what it does not use; so do we, but a
key no PyTC builder knows is refused by name, as is a value of the wrong type. The contract's
``in_channels`` / ``out_channels`` and the config's ``in_planes`` / ``out_planes`` spell the
channel counts too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from models.errors import ModelConfigError

Builder = Callable[[Mapping[str, Any]], nn.Module]


def _ints(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_int(x) for x in v)


# What each key's value must be: a checker, and its description for the error message.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
    "ints": (_ints, "a list of ints"),
    "int_or_ints": (lambda v: _is_int(v) or _ints(v), "an int or a list of ints"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "bools": (lambda v: isinstance(v, list | tuple) and all(isinstance(x, bool) for x in v), "booleans"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "opt_str": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "opt_ints": (lambda v: v is None or _ints(v), "null or a list of ints"),
    "any": (lambda v: True, "anything"),
}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The keys PyTC's build_model passes to every architecture (ignored where unused), with aliases.
COMMON_KEYS: dict[str, tuple[str, str]] = {
    "block_type": ("block_type", "str"),
    "in_channel": ("in_channel", "int"),
    "in_channels": ("in_channel", "int"),
    "in_planes": ("in_channel", "int"),
    "out_channel": ("out_channel", "int"),
    "out_channels": ("out_channel", "int"),
    "out_planes": ("out_channel", "int"),
    "filters": ("filters", "ints"),
    "ks": ("ks", "ints"),
    "blocks": ("blocks", "ints"),
    "attn": ("attn", "opt_str"),
    "is_isotropic": ("is_isotropic", "bool"),
    "isotropy": ("isotropy", "bools"),
    "pad_mode": ("pad_mode", "str"),
    "act_mode": ("act_mode", "str"),
    "norm_mode": ("norm_mode", "str"),
    "pooling": ("pooling", "bool"),
    "return_feats": ("return_feats", "opt_ints"),
    "init_mode": ("init_mode", "str"),
}


def parse_config(
    name: str, config: Mapping[str, Any], extra: Mapping[str, tuple[str, str]]
) -> dict[str, Any]:
    """``config`` as keyword arguments: each key known (common or ``extra``), each value of its
    kind, aliases agreeing. Raises :class:`ModelConfigError` naming the key."""
    keys = {**COMMON_KEYS, **extra}
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key not in keys:
            raise ModelConfigError(f"{name}: unknown config key {key!r}; known: {sorted(keys)}")
        target, kind = keys[key]
        check, expected = _KINDS[kind]
        if not check(value):
            raise ModelConfigError(f"{name}: config key {key!r} must be {expected}, got {value!r}")
        value = list(value) if isinstance(value, tuple) else value
        if target in kwargs and kwargs[target] != value:
            raise ModelConfigError(f"{name}: config key {key!r} contradicts its alias ({kwargs[target]!r})")
        kwargs[target] = value
    return kwargs


def _select(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in names}


_UNET_ARGS = (
    "block_type", "in_channel", "out_channel", "filters", "is_isotropic", "isotropy", "pad_mode",
    "act_mode", "norm_mode", "init_mode", "pooling",
)  # fmt: skip
_UNET_EXTRA: dict[str, tuple[str, str]] = {"blurpool": ("blurpool", "bool")}


def _unet_builder(name: str, dims: int, plus: bool, defaults: Mapping[str, Any]) -> Builder:
    def build(config: Mapping[str, Any]) -> nn.Module:
        from models.pytc.unet import UNet

        kwargs = {**defaults, **_select(parse_config(name, config, _UNET_EXTRA), _UNET_ARGS)}
        return UNet(dims, plus=plus, **kwargs)

    return build


_FPN_ARGS = (
    "backbone_type", "block_type", "in_channel", "out_channel", "filters", "ks", "blocks", "attn",
    "is_isotropic", "isotropy", "pad_mode", "act_mode", "norm_mode", "init_mode", "deploy", "fmap_size",
)  # fmt: skip
_FPN_EXTRA: dict[str, tuple[str, str]] = {
    "backbone_type": ("backbone_type", "str"),
    "backbone": ("backbone_type", "str"),
    "deploy": ("deploy", "bool"),
    "deploy_mode": ("deploy", "bool"),
    "fmap_size": ("fmap_size", "ints"),
}


def _build_fpn(config: Mapping[str, Any]) -> nn.Module:
    from models.pytc.fpn import FPN3D

    return FPN3D(**_select(parse_config("fpn_3d", config, _FPN_EXTRA), _FPN_ARGS))


_DEEPLAB_EXTRA: dict[str, tuple[str, str]] = {
    "backbone_type": ("backbone_type", "str"),
    "backbone": ("backbone_type", "str"),
    "aux_out": ("aux_out", "bool"),
    "name": ("name", "str"),
}
_DEEPLAB_ARGS = ("backbone_type", "in_channel", "out_channel", "aux_out", "pad_mode", "act_mode", "norm_mode")


def _deeplab_builder(name: str) -> Builder:
    def build(config: Mapping[str, Any]) -> nn.Module:
        from models.pytc.deeplab import DeepLabV3

        kwargs = parse_config(name, config, _DEEPLAB_EXTRA)
        if kwargs.get("name", name) != name:
            raise ModelConfigError(
                f"{name}: config key 'name' must be {name!r} or absent, got {kwargs['name']!r}"
            )
        return DeepLabV3(name, **_select(kwargs, _DEEPLAB_ARGS))

    return build


_UNETR_EXTRA: dict[str, tuple[str, str]] = {
    "img_size": ("img_size", "int_or_ints"),
    "input_size": ("img_size", "int_or_ints"),
    "patch_size": ("patch_size", "int_or_ints"),
    "feature_size": ("feature_size", "int"),
    "unetr_feature_size": ("feature_size", "int"),
    "hidden_size": ("hidden_size", "int"),
    "mlp_dim": ("mlp_dim", "int"),
    "num_heads": ("num_heads", "int"),
    "unetr_num_heads": ("num_heads", "int"),
    "pos_embed": ("pos_embed", "str"),
    "norm_name": ("norm_name", "any"),
    "conv_block": ("conv_block", "bool"),
    "res_block": ("res_block", "bool"),
    "dropout_rate": ("dropout_rate", "float"),
    "unetr_dropout_rate": ("dropout_rate", "float"),
    "qkv_bias": ("qkv_bias", "bool"),
}
_UNETR_ARGS = (
    "in_channel", "out_channel", "img_size", "patch_size", "feature_size", "hidden_size", "mlp_dim",
    "num_heads", "pos_embed", "norm_name", "is_isotropic", "conv_block", "res_block", "dropout_rate",
    "qkv_bias",
)  # fmt: skip


def _build_unetr(config: Mapping[str, Any]) -> nn.Module:
    from models.pytc.unetr import UNETR

    return UNETR(**_select(parse_config("unetr", config, _UNETR_EXTRA), _UNETR_ARGS))


_SWIN_EXTRA: dict[str, tuple[str, str]] = {
    "img_size": ("img_size", "int_or_ints"),
    "input_size": ("img_size", "int_or_ints"),
    "depths": ("depths", "ints"),
    "num_heads": ("num_heads", "ints"),
    "swin_unetr_num_heads": ("num_heads", "ints"),
    "feature_size": ("feature_size", "int"),
    "swin_unetr_feature_size": ("feature_size", "int"),
    "norm_name": ("norm_name", "any"),
    "drop_rate": ("drop_rate", "float"),
    "swin_unetr_dropout_rate": ("drop_rate", "float"),
    "attn_drop_rate": ("attn_drop_rate", "float"),
    "dropout_path_rate": ("dropout_path_rate", "float"),
    "normalize": ("normalize", "bool"),
    "use_checkpoint": ("use_checkpoint", "bool"),
    "spatial_dims": ("spatial_dims", "int"),
    "downsample": ("downsample", "str"),
    "use_v2": ("use_v2", "bool"),
}
_SWIN_ARGS = (
    "img_size", "in_channel", "out_channel", "depths", "num_heads", "feature_size", "norm_name",
    "is_isotropic", "isotropy", "drop_rate", "attn_drop_rate", "dropout_path_rate", "normalize",
    "use_checkpoint", "downsample", "use_v2",
)  # fmt: skip


def _build_swinunetr(config: Mapping[str, Any]) -> nn.Module:
    from models.pytc.swinunetr import SwinUNETR

    kwargs = parse_config("swinunetr", config, _SWIN_EXTRA)
    if kwargs.get("spatial_dims", 3) != 3:
        raise ModelConfigError(
            f"swinunetr: config key 'spatial_dims' must be 3, got {kwargs['spatial_dims']!r}"
        )
    return SwinUNETR(**_select(kwargs, _SWIN_ARGS))


_UNET2D_DEFAULTS = {"filters": (32, 64, 128, 256, 512), "act_mode": "leaky_relu", "norm_mode": "gn"}

ARCHITECTURES: dict[str, Builder] = {
    "unet3d": _unet_builder("unet3d", 3, False, {}),
    "unet_3d": _unet_builder("unet_3d", 3, False, {}),
    "unet_plus_3d": _unet_builder("unet_plus_3d", 3, True, {}),
    "unet_2d": _unet_builder("unet_2d", 2, False, _UNET2D_DEFAULTS),
    "unet_plus_2d": _unet_builder("unet_plus_2d", 2, True, _UNET2D_DEFAULTS),
    "fpn_3d": _build_fpn,
    "unetr": _build_unetr,
    "swinunetr": _build_swinunetr,
    "deeplabv3a": _deeplab_builder("deeplabv3a"),
    "deeplabv3b": _deeplab_builder("deeplabv3b"),
    "deeplabv3c": _deeplab_builder("deeplabv3c"),
}
"""Each builder takes a job's ``model.config`` and returns the module, in train mode, random init."""
