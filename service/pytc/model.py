"""``MODEL.*`` of a PyTC config as our ``model`` section, and its targets as heads.

``unet_3d`` becomes our built-in ``unet3d`` (``models/unet3d.py``: PyTC's UNet3D with its state-dict
keys), its config under the names ``models.sizes.UNET3D_CONFIG_KEYS`` knows. Every other PyTC
architecture is written as ``{architecture: <MODEL.ARCHITECTURE>, config: {<PyTC MODEL.* keys,
lower case>: value}}`` plus ``is_isotropic`` (``DATASET.IS_ISOTROPIC``): the plain form the PyTC
architectures of ``models/`` take. Whether the registry builds it is known only where torch is
(admission on a worker): ``pytc convert`` writes it for review whatever the registry holds.
"""

from __future__ import annotations

from typing import Any

from models.sizes import UNET3D_CONFIG_KEYS
from service.pytc.config import PytcConfig
from service.pytc.keys import refuse

PYTC_ARCHITECTURES = (
    "unet_3d", "unet_2d", "unet_plus_3d", "unet_plus_2d", "fpn_3d",
    "deeplabv3a", "deeplabv3b", "deeplabv3c", "unetr", "swinunetr",
)  # fmt: skip

# unet3d's block types as our models/unet3d.py builds them (torch-free here; extend with it)
UNET3D_BLOCK_TYPES = ("residual",)

# MODEL.* keys every PyTC architecture is built with (connectomics/model/build.py)
COMMON_KEYS = (
    "BLOCK_TYPE", "IN_PLANES", "OUT_PLANES", "FILTERS", "KERNEL_SIZES", "BLOCKS", "ATTENTION",
    "ISOTROPY", "PAD_MODE", "ACT_MODE", "NORM_MODE", "POOLING_LAYER",
)  # fmt: skip
ARCHITECTURE_KEYS: dict[str, tuple[str, ...]] = {
    "unetr": (
        "INPUT_SIZE", "UNETR_FEATURE_SIZE", "HIDDEN_SIZE", "MLP_DIM", "UNETR_NUM_HEADS", "POS_EMBED",
        "NORM_NAME", "CONV_BLOCK", "RES_BLOCK", "UNETR_DROPOUT_RATE",
    ),
    "swinunetr": (
        "INPUT_SIZE", "DEPTHS", "SWIN_UNETR_NUM_HEADS", "SWIN_UNETR_FEATURE_SIZE", "NORM_NAME",
        "SWIN_UNETR_DROPOUT_RATE", "ATTN_DROP_RATE", "DROPOUT_PATH_RATE", "NORMALIZE", "USE_CHECKPOINT",
        "SPATIAL_DIMS", "DOWNSAMPLE", "USE_V2",
    ),
    "fpn_3d": ("BACKBONE", "DEPLOY_MODE"),
    "deeplabv3a": ("BACKBONE", "AUX_OUT"),
    "deeplabv3b": ("BACKBONE", "AUX_OUT"),
    "deeplabv3c": ("BACKBONE", "AUX_OUT"),
}  # fmt: skip
# The keys read here, for the accounting of every key (service.pytc.keys)
MODEL_KEYS_READ = frozenset(
    ["MODEL.ARCHITECTURE", "MODEL.PRE_MODEL", "DATASET.IS_ISOTROPIC"]
    + [f"MODEL.{k}" for k in COMMON_KEYS]
    + [f"MODEL.{k}" for keys in ARCHITECTURE_KEYS.values() for k in keys]
)

# unet3d: PyTC key -> our config key
_UNET3D = {
    "IN_PLANES": "in_channel", "OUT_PLANES": "out_channel", "FILTERS": "filters", "ISOTROPY": "isotropy",
    "PAD_MODE": "pad_mode", "ACT_MODE": "act_mode", "NORM_MODE": "norm_mode", "BLOCK_TYPE": "block_type",
}  # fmt: skip


def model_section(cfg: PytcConfig, checkpoint: str | None) -> dict[str, Any]:
    """``{architecture, config[, checkpoint]}`` for ``MODEL.ARCHITECTURE``; refusals name the key."""
    arch = str(cfg.get("MODEL.ARCHITECTURE"))
    if arch not in PYTC_ARCHITECTURES:
        raise refuse(
            "MODEL.ARCHITECTURE", f"not a PyTC v1 architecture (one of {', '.join(PYTC_ARCHITECTURES)})", arch
        )
    section: dict[str, Any] = {}
    if arch == "unet_3d":
        section = {"architecture": "unet3d", "config": _unet3d_config(cfg)}
    else:
        keys = COMMON_KEYS + ARCHITECTURE_KEYS.get(arch, ())
        config = {key.lower(): cfg.get(f"MODEL.{key}") for key in keys}
        config["is_isotropic"] = cfg.get("DATASET.IS_ISOTROPIC")
        section = {"architecture": arch, "config": config}
    if checkpoint is not None:
        section["checkpoint"] = checkpoint
    return section


def _unet3d_config(cfg: PytcConfig) -> dict[str, Any]:
    config = {ours: cfg.get(f"MODEL.{key}") for key, ours in _UNET3D.items()}
    config["is_isotropic"] = cfg.get("DATASET.IS_ISOTROPIC")
    block = config["block_type"]
    if block not in UNET3D_BLOCK_TYPES:
        raise refuse(
            "MODEL.BLOCK_TYPE", f"unet_3d is built here with block types {list(UNET3D_BLOCK_TYPES)}", block
        )
    if cfg.get("MODEL.POOLING_LAYER"):
        if "pooling" not in UNET3D_CONFIG_KEYS:
            raise refuse("MODEL.POOLING_LAYER", "unet_3d is built here with strided convolutions only", True)
        config["pooling"] = True
    for key in config:
        if key not in UNET3D_CONFIG_KEYS:  # a name our unet3d does not take: never written unread
            raise refuse(f"MODEL.{key.upper()}", f"our unet3d has no {key!r} option")
    return config


# PyTC target options: their first character, our target name, channels (SplitActivation)
_TARGETS = {"0": ("binary", 1), "2": ("affinity", 3), "4": ("boundary", 1)}


def target_heads(cfg: PytcConfig) -> list[tuple[str, int, str]]:
    """Per ``MODEL.TARGET_OPT`` entry: (our target, channels, the option) as PyTC splits them."""
    opts = list(cfg.get("MODEL.TARGET_OPT"))
    out_planes = int(cfg.get("MODEL.OUT_PLANES"))
    heads: list[tuple[str, int, str]] = []
    for i, opt in enumerate(opts):
        opt = str(opt)
        if opt == "all" and i == len(opts) - 1:
            heads.append(("none", out_planes - sum(h[1] for h in heads), opt))
        elif opt.startswith("9-"):
            heads.append(("semantic", int(opt.split("-")[1]), opt))
        elif opt[:1] in _TARGETS:
            name, channels = _TARGETS[opt[0]]
            if name == "affinity" and cfg.get("DATASET.DO_2D"):
                channels = 2
            heads.append((name, channels, opt))
        else:
            heads.append(("other", _other_channels(opt), opt))
    if sum(h[1] for h in heads) != out_planes:
        raise refuse(
            "MODEL.TARGET_OPT",
            f"its heads have {[h[1] for h in heads]} channels, MODEL.OUT_PLANES is {out_planes}",
            opts,
        )
    return heads


def _other_channels(opt: str) -> int:
    """Channels of the targets we predict through but do not train (SplitActivation's table)."""
    if opt.startswith("5") and len(opt.split("-")) == 6 and opt.split("-")[3] not in ("0", ""):
        return 11  # quantized distance transform
    if opt.startswith("I-"):
        return int(opt.split("-")[1])
    table = {"1": 3, "3": 1, "5": 1, "6": 1, "7": 2, "8": 1, "a": 1, "I": 1}
    if opt[:1] not in table:
        raise refuse("MODEL.TARGET_OPT", f"{opt!r} is not a PyTC v1 target option", opt)
    return table[opt[0]]
