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

from service.pytc.config import PytcConfig
from service.pytc.keys import refuse
from service.pytc.model import model_section, target_heads

# DATASET.<key> (IMAGE_NAME, LABEL_NAME, VALID_MASK_NAME) -> its volumes, joined with INPUT_PATH
Volumes = Callable[[str], list[dict[str, Any]]]

_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}
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
    doc: dict[str, Any] = {
        "kind": "training",
        "data": _data(cfg, volumes),
        "model": model,
        "targets": _targets(cfg, notes),
        "solver": _solver(cfg),
        "sampling": _sampling(cfg, notes),
        "checkpoint": {
            "dir": str(cfg.get("DATASET.OUTPUT_PATH")),
            "restart": bool(cfg.get("SOLVER.ITERATION_RESTART")),
        },
    }
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
    targets = []
    for i, (kind, channels, opt) in enumerate(heads):
        if kind not in ("binary", "boundary", "affinity", "semantic"):
            raise refuse(
                "MODEL.TARGET_OPT",
                "training learns binary (0), affinity (2), boundary (4) and semantic (9-N) targets",
                opt,
            )
        if kind == "affinity" and opt not in ("2", "2-1-1-1", "2-1-1-1-0"):
            raise refuse("MODEL.TARGET_OPT", "affinities are the nearest-neighbour z, y, x ones (2)", opt)
        loss = _loss(list(losses[i]), list(weights[i]), list(acts[i]), kind)
        if any(str(w) == "1" for w in weight_opts[i] if i < len(weight_opts)):
            notes.append(
                f"MODEL.WEIGHT_OPT {weight_opts[i]} (head {i}): PyTC's class-rebalanced BCE weights; "
                "ours are unweighted"
            )
        target: dict[str, Any] = {"kind": kind, "loss": loss}
        if kind == "semantic":
            target["classes"] = channels
        if erosion[i]:
            target["label_erosion"] = erosion[i]
        if dilation[i]:
            target["label_dilation"] = dilation[i]
        targets.append(target)
    return targets


def _loss(names: list[Any], weights: list[Any], acts: list[Any], kind: str) -> dict[str, float]:
    loss = {"bce": 0.0, "dice": 0.0, "ce": 0.0}
    for name, weight, act in zip(names, weights, acts, strict=False):
        name, act = str(name), str(act)
        if (name in ("WeightedBCEWithLogitsLoss",) and act == "none") or (
            name == "WeightedBCE" and act == "sigmoid"
        ):
            loss["bce"] += float(weight)
        elif name == "DiceLoss" and act in ("sigmoid", "softmax"):
            loss["dice"] += float(weight)
        elif name == "WeightedCE" and act == "none" and kind == "semantic":
            loss["ce"] += float(weight)
        else:
            raise refuse(
                "MODEL.LOSS_OPTION",
                "losses are BCE with logits (activation none), Dice (sigmoid/softmax) "
                "and CE (semantic, none)",
                f"{name} with MODEL.OUTPUT_ACT {act}",
            )
    return loss


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
    if name == "WarmupCosineLR":
        if cfg.get("SOLVER.WARMUP_METHOD") != "linear":
            raise refuse("SOLVER.WARMUP_METHOD", "warm-up is linear", cfg.get("SOLVER.WARMUP_METHOD"))
        return {
            "kind": "pytc_warmup_cosine",
            "warmup": int(cfg.get("SOLVER.WARMUP_ITERS")),
            "warmup_factor": float(cfg.get("SOLVER.WARMUP_FACTOR")),
        }
    raise refuse("SOLVER.LR_SCHEDULER_NAME", "schedules are MultiStepLR and WarmupCosineLR", name)


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
