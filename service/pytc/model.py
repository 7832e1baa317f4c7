"""``MODEL.*`` of a PyTC config as our ``model`` section, and its targets as heads.

Every PyTC v1 architecture is built here under its own name (``models/pytc/``, docs/
pytc_architectures.md) from the keyword arguments PyTC's ``build_model`` passes it
(``connectomics/model/build.py``): the same keys, taken from the same config keys
(:data:`CONFIG_KEYS`). So a converted ``model`` is ``{architecture: <MODEL.ARCHITECTURE>, config:
{block_type, in_channel, ..., <the architecture's own>}}``, and a PyTC checkpoint loads into it as
it is. Whether an option builds is the builder's to say (on a worker, where torch is): ``pytc run``
refuses at admission naming the PyTC key (:mod:`service.kinds.pytc_config`).
"""

from __future__ import annotations

from typing import Any

from service.pytc.config import PytcConfig
from service.pytc.keys import refuse

PYTC_ARCHITECTURES = (
    "unet_3d", "unet_2d", "unet_plus_3d", "unet_plus_2d", "fpn_3d",
    "deeplabv3a", "deeplabv3b", "deeplabv3c", "unetr", "swinunetr",
)  # fmt: skip

# build_model's keyword arguments to every architecture: config key <- PyTC key
COMMON_KEYS: dict[str, str] = {
    "block_type": "MODEL.BLOCK_TYPE", "in_channel": "MODEL.IN_PLANES", "out_channel": "MODEL.OUT_PLANES",
    "filters": "MODEL.FILTERS", "ks": "MODEL.KERNEL_SIZES", "blocks": "MODEL.BLOCKS",
    "attn": "MODEL.ATTENTION", "is_isotropic": "DATASET.IS_ISOTROPIC", "isotropy": "MODEL.ISOTROPY",
    "pad_mode": "MODEL.PAD_MODE", "act_mode": "MODEL.ACT_MODE", "norm_mode": "MODEL.NORM_MODE",
    "pooling": "MODEL.POOLING_LAYER",
}  # fmt: skip
# and those of one architecture
ARCHITECTURE_KEYS: dict[str, dict[str, str]] = {
    "unetr": {
        "img_size": "MODEL.INPUT_SIZE", "feature_size": "MODEL.UNETR_FEATURE_SIZE",
        "hidden_size": "MODEL.HIDDEN_SIZE", "mlp_dim": "MODEL.MLP_DIM", "num_heads": "MODEL.UNETR_NUM_HEADS",
        "pos_embed": "MODEL.POS_EMBED", "norm_name": "MODEL.NORM_NAME", "conv_block": "MODEL.CONV_BLOCK",
        "res_block": "MODEL.RES_BLOCK", "dropout_rate": "MODEL.UNETR_DROPOUT_RATE",
    },
    "swinunetr": {
        "img_size": "MODEL.INPUT_SIZE", "depths": "MODEL.DEPTHS", "num_heads": "MODEL.SWIN_UNETR_NUM_HEADS",
        "feature_size": "MODEL.SWIN_UNETR_FEATURE_SIZE", "norm_name": "MODEL.NORM_NAME",
        "drop_rate": "MODEL.SWIN_UNETR_DROPOUT_RATE", "attn_drop_rate": "MODEL.ATTN_DROP_RATE",
        "dropout_path_rate": "MODEL.DROPOUT_PATH_RATE", "normalize": "MODEL.NORMALIZE",
        "use_checkpoint": "MODEL.USE_CHECKPOINT", "spatial_dims": "MODEL.SPATIAL_DIMS",
        "downsample": "MODEL.DOWNSAMPLE", "use_v2": "MODEL.USE_V2",
    },
    "fpn_3d": {"backbone_type": "MODEL.BACKBONE", "deploy": "MODEL.DEPLOY_MODE"},
    **{
        name: {"backbone_type": "MODEL.BACKBONE", "aux_out": "MODEL.AUX_OUT"}
        for name in ("deeplabv3a", "deeplabv3b", "deeplabv3c")
    },
}  # fmt: skip
# Every config key -> the PyTC key it comes from (errors about the config name PyTC's key)
CONFIG_KEYS: dict[str, str] = (
    {k: v for keys in ARCHITECTURE_KEYS.values() for k, v in keys.items()}
    | COMMON_KEYS
    | {"fmap_size": "MODEL.INPUT_SIZE"}
)
# The keys read here, for the accounting of every key (service.pytc.keys)
MODEL_KEYS_READ = frozenset(["MODEL.ARCHITECTURE", "MODEL.PRE_MODEL", *CONFIG_KEYS.values()])


def model_section(cfg: PytcConfig, checkpoint: str | None) -> dict[str, Any]:
    """``{architecture, config[, checkpoint]}`` as PyTC's ``build_model`` builds ``MODEL.ARCHITECTURE``."""
    arch = str(cfg.get("MODEL.ARCHITECTURE"))
    if arch not in PYTC_ARCHITECTURES:
        raise refuse(
            "MODEL.ARCHITECTURE", f"not a PyTC v1 architecture (one of {', '.join(PYTC_ARCHITECTURES)})", arch
        )
    keys = {**COMMON_KEYS, **ARCHITECTURE_KEYS.get(arch, {})}
    config = {name: cfg.get(key) for name, key in keys.items()}
    if arch == "fpn_3d" and config["backbone_type"] == "botnet":
        config["fmap_size"] = cfg.get("MODEL.INPUT_SIZE")  # as build_model: BotNet's attention map size
    section: dict[str, Any] = {"architecture": arch, "config": config}
    if checkpoint is not None:
        section["checkpoint"] = checkpoint
    return section


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
