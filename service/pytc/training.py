"""A PyTC v1 configuration as our training document.

Targets, losses, the solver, sampling and the augmentations our trainer has are mapped key by key;
a key set to something we cannot honour is refused naming it. Training is random in PyTC and here
alike (v1 saves no RNG state), so a PyTC default that our trainer only approximates (class-rebalanced
BCE weights, augmentations we do not have, switched on by PyTC's defaults) is not refused but
listed in the conversion's ``notes``, which ``pytc convert`` writes at the top of the document and
``pytc run`` prints: nothing is dropped unsaid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.training_config import REGULARIZER_HEADS
from service.pytc.config import PytcConfig
from service.pytc.keys import refuse
from service.pytc.model import model_section, target_heads

# DATASET.<key> (IMAGE_NAME, LABEL_NAME, VALID_MASK_NAME) -> its volumes, joined with INPUT_PATH
Volumes = Callable[[str], list[dict[str, Any]]]

_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}
# PyTC's Criterion.regu_dict -> our regularisers
_REGULARIZERS = {
    "Binary": "binary", "FgContour": "fg_contour", "ContourDT": "contour_dt", "FgDT": "fg_dt",
    "Nonoverlap": "nonoverlap",
}  # fmt: skip
_SCHEDULES = "MultiStepLR, WarmupMultiStepLR and WarmupCosineLR"
_UNSUPPORTED_AUGMENTATIONS = (
    "RESCALE", "MISSINGPARTS", "MISALIGNMENT", "MOTIONBLUR", "CUTBLUR", "CUTNOISE",
)  # fmt: skip


def training_document(
    cfg: PytcConfig, checkpoint: str | None, volumes: Volumes, notes: list[str]
) -> dict[str, Any]:
    """The training document of ``cfg``; approximations of PyTC's defaults go to ``notes``."""
    model = model_section(cfg, None)
    pre_model = str(cfg.get("MODEL.PRE_MODEL") or "")
    if pre_model:
        model["init"] = pre_model
    targets = _targets(cfg, notes)
    doc: dict[str, Any] = {
        "kind": "training",
        "data": _data(cfg, volumes),
        "model": model,
        "targets": targets,
        "solver": _solver(cfg),
        "sampling": _sampling(cfg, notes),
        "checkpoint": {
            "dir": str(cfg.get("DATASET.OUTPUT_PATH")),
            "restart": bool(cfg.get("SOLVER.ITERATION_RESTART")),
        },
    }
    regularization = _regularization(cfg, targets)
    if regularization:
        doc["regularization"] = regularization
    if checkpoint is not None:
        doc["checkpoint"]["resume_from"] = checkpoint
    if pre_model and checkpoint is not None:
        raise refuse(
            "MODEL.PRE_MODEL",
            "give MODEL.PRE_MODEL (fine-tune) or --checkpoint (resume), not both",
            pre_model,
        )
    return doc


def _data(cfg: PytcConfig, volumes: Volumes) -> dict[str, Any]:
    """``data.image``/``label``/``valid_mask`` for one volume; ``data.volumes`` for several
    (``a.h5@b.h5``, or a list), which PyTC's ``VolumeDataset`` samples by their patch positions, as
    ours does. Labels and masks pair with the images in order, one each."""
    images = volumes("IMAGE_NAME")
    arrays: dict[str, list[dict[str, Any]]] = {"image": images, "label": volumes("LABEL_NAME")}
    if cfg.get("DATASET.VALID_MASK_NAME") is not None:
        arrays["valid_mask"] = volumes("VALID_MASK_NAME")
    for name, key in (("label", "DATASET.LABEL_NAME"), ("valid_mask", "DATASET.VALID_MASK_NAME")):
        if name in arrays and len(arrays[name]) != len(images):
            raise refuse(
                key,
                f"one per training volume: DATASET.IMAGE_NAME names {len(images)}, this {len(arrays[name])}",
                cfg.get(key),
            )
    each = [{name: arrays[name][i] for name in arrays} for i in range(len(images))]
    if len(each) == 1:
        return {**each[0], "normalize": _normalize(cfg)}
    return {"volumes": each, "normalize": _normalize(cfg)}


def _label_transforms(cfg: PytcConfig, key: str, count: int, notes: list[str]) -> list[int]:
    """PyTC's MODEL.LABEL_EROSION / LABEL_DILATION: None (off), one width for every target, or a
    list indexed by target (``erode_label``/``dilate_label``: ``rates[index]``)."""
    value = cfg.get(key)
    if value is None:
        return [0] * count
    widths = list(value) if isinstance(value, list) else [value] * count
    if len(widths) < count:
        raise refuse(key, f"PyTC takes one width per MODEL.TARGET_OPT target ({count})", value)
    if len(widths) > count:
        notes.append(f"{key} {value}: widths beyond the {count} target(s) are unused, as in PyTC")
    for width in widths[:count]:
        if isinstance(width, bool) or not isinstance(width, int) or not 0 <= width <= 64:
            raise refuse(key, "widths are whole numbers of voxels from 0 to 64", value)
    return [int(w) for w in widths[:count]]


def _normalize(cfg: PytcConfig) -> Any:
    match = str(cfg.get("DATASET.MATCH_ACT"))
    if match == "sigmoid":
        return "auto"
    if match == "tanh":
        return {"mean": 0.5, "std": 0.5}
    return {"mean": float(cfg.get("DATASET.MEAN")), "std": float(cfg.get("DATASET.STD"))}


def _targets(cfg: PytcConfig, notes: list[str]) -> list[dict[str, Any]]:
    losses, weights = list(cfg.get("MODEL.LOSS_OPTION")), list(cfg.get("MODEL.LOSS_WEIGHT"))
    acts, weight_opts = list(cfg.get("MODEL.OUTPUT_ACT")), list(cfg.get("MODEL.WEIGHT_OPT"))
    heads = target_heads(cfg)
    erosion = _label_transforms(cfg, "MODEL.LABEL_EROSION", len(heads), notes)
    dilation = _label_transforms(cfg, "MODEL.LABEL_DILATION", len(heads), notes)
    for key, value in (
        ("MODEL.LOSS_OPTION", losses),
        ("MODEL.LOSS_WEIGHT", weights),
        ("MODEL.OUTPUT_ACT", acts),
    ):
        if len(value) != len(heads):
            raise refuse(key, f"one entry per MODEL.TARGET_OPT head ({len(heads)})", value)
    kwargs = _loss_kwargs(cfg, len(heads))
    targets = []
    for i, (kind, channels, opt) in enumerate(heads):
        extra: dict[str, Any] = {}
        if kind == "other" and opt == "1":
            kind = "polarity"
        elif kind == "other" and opt == "1-1":
            kind, extra = "polarity", {"exclusive": True}
        elif kind == "other" and opt[:1] == "6":
            kind, extra = "distance", {"distance": _distance(opt)}
        elif kind == "other" and opt[:1] == "5":
            kind, extra = "instance_distance", {"instance_distance": _instance_distance(opt)}
        if kind not in (
            "binary",
            "boundary",
            "affinity",
            "semantic",
            "polarity",
            "distance",
            "instance_distance",
        ):
            raise refuse(
                "MODEL.TARGET_OPT",
                "training learns binary (0), synaptic polarity (1), affinity (2), boundary (4), instance "
                "distance (5), semantic distance (6) and semantic (9-N) targets",
                opt,
            )
        if kind == "affinity" and opt not in ("2", "2-1-1-1", "2-1-1-1-0"):
            offsets = _affinity_offsets(opt)
            if offsets != [1, 1, 1]:
                extra = {"offsets": offsets}
        quantized = extra.get("instance_distance", {}).get("quantize")
        softmax_kind = "semantic" if extra.get("exclusive") or quantized else kind
        softmax_kind = "distance" if kind == "instance_distance" and not quantized else softmax_kind
        loss = _loss(list(losses[i]), list(weights[i]), list(acts[i]), softmax_kind, kwargs[i])
        if any(str(w).startswith("1") for w in weight_opts[i] if i < len(weight_opts)):
            notes.append(
                f"MODEL.WEIGHT_OPT {weight_opts[i]} (head {i}): PyTC's class-rebalanced BCE weights; "
                "ours are unweighted"
            )
        target: dict[str, Any] = {"kind": kind, "loss": loss, **extra}
        if kind == "semantic":
            target["classes"] = channels
        if erosion[i]:
            target["label_erosion"] = erosion[i]
        if dilation[i]:
            target["label_dilation"] = dilation[i]
        targets.append(target)
    return targets


def _affinity_offsets(opt: str) -> list[int]:
    """``2-z-y-x-v1`` as PyTC's ``seg2affinity`` reads it (``seg2aff_v1``: the voxel that many steps
    back along each axis); PyTC's ``v2`` and ``pni`` versions are refused."""
    parts = opt.split("-")
    if len(parts) != 5 or parts[4] != "v1":
        raise refuse(
            "MODEL.TARGET_OPT",
            "affinities are the nearest-neighbour ones (2) or 2-z-y-x-v1 (PyTC's seg2aff_v1; v2 and pni "
            "are not made here)",
            opt,
        )
    try:
        offsets = [int(v) for v in parts[1:4]]
    except ValueError:
        raise refuse("MODEL.TARGET_OPT", "its z, y, x steps are whole numbers (2-z-y-x-v1)", opt) from None
    if not all(1 <= v <= 64 for v in offsets):
        raise refuse("MODEL.TARGET_OPT", "its z, y, x steps are 1 to 64 voxels", opt)
    return offsets


def _distance(opt: str) -> dict[str, Any]:
    """``6[-mode-alpha_fore-alpha_back]`` as PyTC reads it (``6`` is ``6-2d-8-50``)."""
    parts = (opt if len(opt) > 1 else opt + "-2d-8-50").split("-")
    if len(parts) != 4 or parts[0] != "6" or parts[1] not in ("2d", "3d"):
        raise refuse("MODEL.TARGET_OPT", "a semantic distance target is 6 or 6-<2d|3d>-<a>-<b>", opt)
    try:
        fore, back = float(parts[2]), float(parts[3])
    except ValueError:
        raise refuse("MODEL.TARGET_OPT", "its alphas are numbers (6-2d-8-50)", opt) from None
    if fore <= 0 or back <= 0:
        raise refuse("MODEL.TARGET_OPT", "its alphas divide the distances: positive numbers", opt)
    return {"mode": parts[1], "alpha_fore": fore, "alpha_back": back}


def _instance_distance(opt: str) -> dict[str, Any]:
    """``5[-mode-padding-quantize-z_res-erosion]`` as PyTC's ``seg2inst_edt`` reads it (``5`` is
    ``5-2d-0-0-5.0-0``)."""
    parts = (opt if len(opt) > 1 else opt + "-2d-0-0-5.0-0").split("-")
    shape = "5-<2d|3d>-<padding 0|1>-<quantize 0|1>-<z resolution>-<erosion>"
    if len(parts) != 6 or parts[0] != "5" or parts[1] not in ("2d", "3d"):
        raise refuse("MODEL.TARGET_OPT", f"an instance distance target is 5 or {shape}", opt)
    try:
        padding, quantize, z_res, erosion = int(parts[2]), int(parts[3]), float(parts[4]), int(parts[5])
    except ValueError:
        raise refuse("MODEL.TARGET_OPT", f"its fields are numbers: {shape}", opt) from None
    if z_res <= 0 or not 0 <= erosion <= 16:
        raise refuse("MODEL.TARGET_OPT", "its z resolution is positive and its erosion 0 to 16", opt)
    return {
        "mode": parts[1], "padding": bool(padding), "quantize": bool(quantize),
        "z_resolution": z_res, "erosion": erosion,
    }  # fmt: skip


def _loss_kwargs(cfg: PytcConfig, count: int) -> list[list[dict[str, Any] | None]]:
    """Per head, per loss: the keyword arguments PyTC's Criterion.build_from_cfg passes (or None)."""
    keys, vals = cfg.get("MODEL.LOSS_KWARGS_KEY"), cfg.get("MODEL.LOSS_KWARGS_VAL")
    out: list[list[dict[str, Any] | None]] = [[] for _ in range(count)]
    if keys is None:
        return out
    vals = vals if vals is not None else []
    if len(keys) != len(vals) or len(keys) != count:
        raise refuse(
            "MODEL.LOSS_KWARGS_KEY",
            f"one entry per MODEL.TARGET_OPT head ({count}) in it and in MODEL.LOSS_KWARGS_VAL",
            keys,
        )
    for i, (head_keys, head_vals) in enumerate(zip(keys, vals, strict=True)):
        if not head_keys:
            continue
        if head_vals is None or len(head_keys) != len(head_vals):
            raise refuse(
                "MODEL.LOSS_KWARGS_VAL", f"one entry per loss of head {i}, as MODEL.LOSS_KWARGS_KEY", vals
            )
        for names, values in zip(head_keys, head_vals, strict=True):
            if names is None:
                out[i].append(None)
                continue
            if values is None or len(names) != len(values):
                raise refuse("MODEL.LOSS_KWARGS_VAL", f"one value per name of head {i}", vals)
            out[i].append(dict(zip([str(n) for n in names], values, strict=True)))
    return out


def _loss(
    names: list[Any], weights: list[Any], acts: list[Any], kind: str, kwargs: list[dict[str, Any] | None]
) -> dict[str, Any]:
    loss: dict[str, Any] = {"bce": 0.0, "dice": 0.0, "ce": 0.0}
    for j, (name, weight, act) in enumerate(zip(names, weights, acts, strict=False)):
        name, act = str(name), str(act)
        given = (kwargs[j] if j < len(kwargs) else None) or {}
        if given and (name != "WeightedCE" or set(given) != {"class_weight"}):
            raise refuse(
                "MODEL.LOSS_KWARGS_KEY",
                "the only loss argument taken is WeightedCE's class_weight",
                f"{name} with {sorted(given)}",
            )
        if kind == "distance":
            if name == "WeightedMSE" and act == "tanh":
                loss["mse"] = loss.get("mse", 0.0) + float(weight)
                continue
            raise refuse(
                "MODEL.LOSS_OPTION",
                "a distance target (6, or 5 unquantized) learns by WeightedMSE on MODEL.OUTPUT_ACT tanh",
                f"{name} with MODEL.OUTPUT_ACT {act}",
            )
        if (name in ("WeightedBCEWithLogitsLoss",) and act == "none") or (
            name == "WeightedBCE" and act == "sigmoid"
        ):
            loss["bce"] += float(weight)
        elif name == "DiceLoss" and act in ("sigmoid", "softmax"):
            loss["dice"] += float(weight)
            loss["dice_style"] = "pytc"
        elif name == "WeightedCE" and act == "none" and kind == "semantic":
            loss["ce"] += float(weight)
            if "class_weight" in given:
                _class_weight(loss, given["class_weight"])
        else:
            raise refuse(
                "MODEL.LOSS_OPTION",
                "losses are BCE with logits (activation none), Dice (sigmoid/softmax), "
                "CE (semantic, none) and MSE (distance, tanh)",
                f"{name} with MODEL.OUTPUT_ACT {act}",
            )
    return loss


def _class_weight(loss: dict[str, Any], value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and v >= 0 for v in value):
        raise refuse("MODEL.LOSS_KWARGS_VAL", "class_weight is a list of non-negative numbers", value)
    weights = [float(v) for v in value]
    if "class_weight" in loss and loss["class_weight"] != weights:
        raise refuse("MODEL.LOSS_KWARGS_VAL", "one class_weight per head (its CE losses differ)", value)
    loss["class_weight"] = weights


def _regularization(cfg: PytcConfig, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PyTC's REGU_OPT, REGU_TARGET and REGU_WEIGHT as our regularisers, checked as PyTC's
    Criterion uses them (its names, one target list and one weight each, the heads they read)."""
    opts, heads, weights = (cfg.get(f"MODEL.REGU_{k}") for k in ("OPT", "TARGET", "WEIGHT"))
    if opts is None:
        return []
    if heads is None or weights is None or not (len(opts) == len(heads) == len(weights)):
        raise refuse(
            "MODEL.REGU_TARGET", "one target list and one MODEL.REGU_WEIGHT per MODEL.REGU_OPT", heads
        )
    out = []
    for opt, on, weight in zip(opts, heads, weights, strict=True):
        kind = _REGULARIZERS.get(str(opt))
        if kind is None:
            raise refuse("MODEL.REGU_OPT", f"PyTC's regularisers are {', '.join(_REGULARIZERS)}", opt)
        wanted = REGULARIZER_HEADS[kind]  # type: ignore[index]
        if not isinstance(on, list) or len(on) != len(wanted):
            raise refuse("MODEL.REGU_TARGET", f"{opt} takes {len(wanted)} MODEL.TARGET_OPT index(es)", on)
        for index, kinds in zip(on, wanted, strict=True):
            if not isinstance(index, int) or not 0 <= index < len(targets):
                raise refuse("MODEL.REGU_TARGET", f"{index!r} is not a MODEL.TARGET_OPT index", on)
            if targets[index]["kind"] not in kinds:
                raise refuse(
                    "MODEL.REGU_TARGET",
                    f"{opt} reads a {' or '.join(kinds)} head there; "
                    f"head {index} is {targets[index]['kind']}",
                    on,
                )
        if not isinstance(weight, (int, float)) or weight < 0:
            raise refuse("MODEL.REGU_WEIGHT", "a non-negative number per regulariser", weight)
        out.append({"kind": kind, "targets": list(on), "weight": float(weight)})
    return out


def _solver(cfg: PytcConfig) -> dict[str, Any]:
    name = str(cfg.get("SOLVER.NAME"))
    if name not in _OPTIMIZERS:
        raise refuse("SOLVER.NAME", f"optimizers are {', '.join(_OPTIMIZERS)}", name)
    if int(cfg.get("SOLVER.ITERATION_STEP")) != 1:
        raise refuse(
            "SOLVER.ITERATION_STEP",
            "gradients are not accumulated over iterations",
            cfg.get("SOLVER.ITERATION_STEP"),
        )
    solver: dict[str, Any] = {
        "optimizer": _OPTIMIZERS[name],
        "lr": float(cfg.get("SOLVER.BASE_LR")),
        "momentum": float(cfg.get("SOLVER.MOMENTUM")),
        "weight_decay": float(cfg.get("SOLVER.WEIGHT_DECAY")),
        "param_groups": "pytc",
        "bias_lr_factor": float(cfg.get("SOLVER.BIAS_LR_FACTOR")),
        "weight_decay_bias": float(cfg.get("SOLVER.WEIGHT_DECAY_BIAS")),
        "weight_decay_norm": float(cfg.get("SOLVER.WEIGHT_DECAY_NORM")),
        "betas": [float(b) for b in cfg.get("SOLVER.BETAS")],
        "schedule": _schedule(cfg),
        "iterations": int(cfg.get("SOLVER.ITERATION_TOTAL")),
        "batch_size": int(cfg.get("SOLVER.SAMPLES_PER_BATCH")),
        "save_every": int(cfg.get("SOLVER.ITERATION_SAVE")),
    }
    if cfg.get("SOLVER.CLIP_GRADIENTS.ENABLED"):
        if (
            cfg.get("SOLVER.CLIP_GRADIENTS.CLIP_TYPE") != "norm"
            or float(cfg.get("SOLVER.CLIP_GRADIENTS.NORM_TYPE")) != 2.0
        ):
            raise refuse(
                "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                "gradients are clipped by their L2 norm only",
                cfg.get("SOLVER.CLIP_GRADIENTS.CLIP_TYPE"),
            )
        solver["clip_grad_norm"] = float(cfg.get("SOLVER.CLIP_GRADIENTS.CLIP_VALUE"))
    return solver


def _schedule(cfg: PytcConfig) -> dict[str, Any]:
    name = str(cfg.get("SOLVER.LR_SCHEDULER_NAME"))
    if name == "MultiStepLR":
        return {
            "kind": "step",
            "milestones": [int(s) for s in cfg.get("SOLVER.STEPS")],
            "gamma": float(cfg.get("SOLVER.GAMMA")),
        }
    if name in ("WarmupCosineLR", "WarmupMultiStepLR"):
        if cfg.get("SOLVER.WARMUP_METHOD") != "linear":
            raise refuse("SOLVER.WARMUP_METHOD", "warm-up is linear", cfg.get("SOLVER.WARMUP_METHOD"))
        warmup = {
            "warmup": int(cfg.get("SOLVER.WARMUP_ITERS")),
            "warmup_factor": float(cfg.get("SOLVER.WARMUP_FACTOR")),
        }
        if name == "WarmupCosineLR":
            return {"kind": "pytc_warmup_cosine", **warmup}
        steps = [int(s) for s in cfg.get("SOLVER.STEPS")]
        if steps != sorted(steps):
            raise refuse("SOLVER.STEPS", "WarmupMultiStepLR takes increasing milestones", steps)
        return {
            "kind": "pytc_warmup_step",
            "milestones": steps,
            "gamma": float(cfg.get("SOLVER.GAMMA")),
            **warmup,
        }
    raise refuse(
        "SOLVER.LR_SCHEDULER_NAME",
        f"schedules are {_SCHEDULES} (PyTC's ReduceLROnPlateau steps on a loss PyTC v1's trainer never "
        "passes it, and its OneCycle reads SOLVER.MAX_ITER, which v1 does not have)",
        name,
    )


def _sampling(cfg: PytcConfig, notes: list[str]) -> dict[str, Any]:
    def aug(key: str) -> Any:
        return cfg.get(f"AUGMENTOR.{key}")

    on = bool(aug("ENABLED"))
    patch = [int(v) for v in cfg.get("MODEL.INPUT_SIZE")]
    # PyTC's Flip(do_ztrans=1) swaps z and x half the time (any other value: never)
    ztranspose = on and bool(aug("FLIP.ENABLED")) and aug("FLIP.DO_ZTRANS") == 1
    if ztranspose and patch[0] != patch[2]:
        raise refuse(
            "AUGMENTOR.FLIP.DO_ZTRANS",
            f"swaps z and x, so MODEL.INPUT_SIZE needs as many sections as columns (it is {patch}); "
            "PyTC's own crops would change shape",
            aug("FLIP.DO_ZTRANS"),
        )
    sampling: dict[str, Any] = {
        "patch_size": patch,
        "valid_ratio": float(cfg.get("DATASET.VALID_RATIO")),
        "augment": {
            "flip": on and bool(aug("FLIP.ENABLED")),
            "transpose": on and bool(aug("ROTATE.ENABLED")),
            "rotate90": on and bool(aug("ROTATE.ENABLED")) and bool(aug("ROTATE.ROT90")),
            "intensity": 0.1 if on and aug("GRAYSCALE.ENABLED") else 0.0,
            "missing_section": float(aug("MISSINGSECTION.P"))
            if on and aug("MISSINGSECTION.ENABLED")
            else 0.0,
            "elastic": float(aug("ELASTIC.P")) if on and aug("ELASTIC.ENABLED") else 0.0,
            "elastic_alpha": float(aug("ELASTIC.ALPHA")),
            "ztranspose": ztranspose,
        },
    }
    threshold = int(cfg.get("DATASET.REJECT_SAMPLING.SIZE_THRES"))
    if threshold < 0:
        sampling["reject"] = False
    else:
        sampling["reject"] = {
            "min_foreground": max(1, threshold),
            "probability": float(cfg.get("DATASET.REJECT_SAMPLING.P")),
            "max_tries": int(cfg.get("DATASET.REJECT_SAMPLING.NUM_TRIAL")),
        }
    if on:
        for name in _UNSUPPORTED_AUGMENTATIONS:
            if aug(f"{name}.ENABLED"):
                notes.append(
                    f"AUGMENTOR.{name}.ENABLED: PyTC's {name.lower()} augmentation is not among ours; "
                    "not applied"
                )
    return sampling
