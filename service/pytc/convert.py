"""A PyTC v1 configuration as our job document: inference (``--inference``) or training.

What PyTC's ``Trainer.test`` does becomes the inference document field by field (docs/pytc.md has
the table): the window is ``MODEL.INPUT_SIZE`` stepping by ``INFERENCE.STRIDE`` over the volume
padded by ``DATASET.PAD_SIZE`` (``INFERENCE.PAD_SIZE`` under ``--inference``), blended by
``INFERENCE.BLENDING``, with ``INFERENCE.AUG_NUM``/``AUG_MODE`` test-time augmentation and one
``INFERENCE.OUTPUT_ACT`` per ``MODEL.TARGET_OPT`` head; the input is read as PyTC reads it
(``/ 255``, then ``(x - DATASET.MEAN) / DATASET.STD``); the output is uint8 truncated as PyTC writes
it, each window clipped at 0 and TTA min/max started as PyTC starts them (``window.raw_heads: pytc``).
A key set to what the service cannot honour is a :class:`SpecError` naming it; keys that change
nothing are listed in :data:`service.pytc.keys.IGNORED`. Nothing here reads data: an HDF5 input's
first dataset (PyTC's choice when none is named) is asked of ``first_dataset``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.pytc.config import PytcConfig, load_pytc_config
from service.pytc.keys import REFUSED_IN_INFERENCE, REFUSED_IN_TRAINING, REFUSED_UNLESS_DEFAULT, refuse
from service.pytc.model import model_section, target_heads
from service.pytc.training import training_document
from workers.errors import SpecError

# The path of an HDF5 file (as the document names it) -> its first dataset, or None
FirstDataset = Callable[[str], "str | None"]

# HDF5 and TileDataset JSON as PyTC reads them; zarr and N5 (an array, or a container's array as
# ``vol.zarr/raw``) beyond PyTC: what the service reads
READABLE = (".h5", ".hdf5", ".json", ".zarr", ".n5")
ACTIVATIONS = {"sigmoid": "sigmoid", "softmax": "softmax", "tanh": "tanh", "none": "none"}


@dataclass(frozen=True)
class Conversion:
    """Our job document, and the PyTC defaults it only approximates (training), said aloud."""

    document: dict[str, Any]
    notes: tuple[str, ...] = ()


def convert_pytc(
    texts: Sequence[tuple[str, str]],
    overrides: Sequence[str] = (),
    *,
    inference: bool = False,
    checkpoint: str | None = None,
    first_dataset: FirstDataset | None = None,
) -> Conversion:
    """PyTC config texts (base, then experiment: ``(name, text)``) and trailing ``KEY VALUE``
    overrides -> our job document (a plain mapping, ready for YAML or ``POST /v1/jobs``)."""
    cfg = load_pytc_config(texts, overrides, inference=inference)
    check_refused(cfg)
    if inference:
        return Conversion(inference_document(cfg, checkpoint, first_dataset))
    notes: list[str] = []
    document = training_document(cfg, checkpoint, lambda key: volume_path(cfg, key, first_dataset), notes)
    return Conversion(document, tuple(notes))


def check_refused(cfg: PytcConfig) -> None:
    """Keys we do not do, set to anything but PyTC's default, in the mode that reads them."""
    mode = REFUSED_IN_INFERENCE if cfg.inference else REFUSED_IN_TRAINING
    for key, reason in {**REFUSED_UNLESS_DEFAULT, **mode}.items():
        if not cfg.is_default(key):
            raise refuse(key, reason, cfg.get(key))


def inference_document(
    cfg: PytcConfig, checkpoint: str | None, first_dataset: FirstDataset | None
) -> dict[str, Any]:
    heads = target_heads(cfg)
    return {
        "kind": "inference",
        "input": {**volume_path(cfg, "IMAGE_NAME", first_dataset), "normalize": _normalize(cfg)},
        "model": model_section(cfg, checkpoint),
        "window": _window(cfg),
        "output": _output(cfg, heads),
    }


def _window(cfg: PytcConfig) -> dict[str, Any]:
    patch = [int(v) for v in cfg.get("MODEL.INPUT_SIZE")]
    if [int(v) for v in cfg.get("MODEL.OUTPUT_SIZE")] != patch:
        raise refuse(
            "MODEL.OUTPUT_SIZE",
            f"windows are blended at the size they are read; MODEL.INPUT_SIZE is {patch}",
            cfg.get("MODEL.OUTPUT_SIZE"),
        )
    blending = str(cfg.get("INFERENCE.BLENDING"))
    if blending not in ("gaussian", "bump"):
        raise refuse("INFERENCE.BLENDING", "PyTC v1 blends by gaussian or bump", blending)
    window: dict[str, Any] = {
        "patch_size": patch,
        "stride": [int(v) for v in cfg.get("INFERENCE.STRIDE")],
        "blending": blending,
        "pad_size": [int(v) for v in cfg.get("DATASET.PAD_SIZE")],
        "pad_mode": _pad_mode(cfg),
        # PyTC's test loader batches SAMPLES_PER_BATCH per GPU; a window's float rounding depends
        # on its batch's size (oneDNN), so the same batches give PyTC's uint8 bit for bit
        "batch_size": int(cfg.get("INFERENCE.SAMPLES_PER_BATCH")) * max(1, int(cfg.get("SYSTEM.NUM_GPUS"))),
        "raw_heads": "pytc",
    }
    if any(s > p for s, p in zip(window["stride"], patch, strict=True)):
        raise refuse(
            "INFERENCE.STRIDE",
            f"a stride larger than the window {patch} leaves voxels unpredicted",
            window["stride"],
        )
    variants = _tta_variants(cfg)
    window["tta"] = {"variants": variants, "reduce": str(cfg.get("INFERENCE.AUG_MODE"))}
    if window["tta"]["reduce"] not in ("mean", "min", "max"):
        raise refuse("INFERENCE.AUG_MODE", "PyTC v1 reduces by mean, min or max", window["tta"]["reduce"])
    return window


def _tta_variants(cfg: PytcConfig) -> int:
    number = cfg.get("INFERENCE.AUG_NUM")
    if number in (None, 0):
        return 1
    if number not in (4, 8, 16):
        raise refuse("INFERENCE.AUG_NUM", "PyTC v1 augments with 4, 8 or 16 variants", number)
    if cfg.get("DATASET.DO_2D"):
        return min(int(number), 8)  # PyTC: 2D images have no z flip
    return int(number)


def _pad_mode(cfg: PytcConfig) -> str:
    mode = str(cfg.get("DATASET.PAD_MODE"))
    if mode == "reflect":
        return "reflect"
    if mode == "constant" and cfg.is_default("DATASET.MEAN") and cfg.is_default("DATASET.STD"):
        return "constant"
    raise refuse("DATASET.PAD_MODE", "padding is reflect, or constant with the default MEAN and STD", mode)


def _normalize(cfg: PytcConfig) -> dict[str, Any] | str:
    """PyTC: a crop ``/ 255`` then ``normalize_image``: as is under MATCH_ACT sigmoid, ``2x - 1``
    under tanh, else ``(x - MEAN) / STD``. Ours: ``auto`` (uint8 / 255) then the mean and std."""
    match = str(cfg.get("DATASET.MATCH_ACT"))
    if match == "sigmoid":
        return "auto"
    if match == "tanh":
        return {"mean": 0.5, "std": 0.5}
    if match != "none":
        raise refuse("DATASET.MATCH_ACT", "PyTC v1 matches none, sigmoid or tanh", match)
    return {"mean": float(cfg.get("DATASET.MEAN")), "std": float(cfg.get("DATASET.STD"))}


def _output(cfg: PytcConfig, heads: list[tuple[str, int, str]]) -> dict[str, Any]:
    acts = list(cfg.get("INFERENCE.OUTPUT_ACT"))
    if len(acts) != len(heads):
        raise refuse("INFERENCE.OUTPUT_ACT", f"one activation per MODEL.TARGET_OPT head ({len(heads)})", acts)
    for act in acts:
        if act not in ACTIVATIONS:
            raise refuse("INFERENCE.OUTPUT_ACT", "activations are sigmoid, softmax, tanh or none", act)
    out_dir = str(cfg.get("INFERENCE.OUTPUT_PATH") or cfg.get("DATASET.OUTPUT_PATH"))
    name = str(cfg.get("INFERENCE.OUTPUT_NAME"))
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return {
        "path": posixpath.join(out_dir, stem + ".zarr"),
        "dataset": "vol0",  # PyTC's writeh5 names the volumes vol0, vol1, ...
        "dtype": "uint8",
        "uint8_rounding": "truncate",
        "heads": [h[1] for h in heads],
        "activation": [ACTIVATIONS[a] for a in acts],
    }


def volume_path(cfg: PytcConfig, key: str, first_dataset: FirstDataset | None) -> dict[str, Any]:
    """``DATASET.INPUT_PATH`` joined with ``DATASET.<key>`` as PyTC joins them: one volume, in a
    format the service reads; an HDF5 file's first dataset when PyTC would take it."""
    dotted = f"DATASET.{key}"
    names = _names(cfg.get(dotted), _source(cfg, key))
    dirs = _names(cfg.get("DATASET.INPUT_PATH"), "DATASET.INPUT_PATH")
    dotted = _source(cfg, key)
    if len(names) != 1 or len(dirs) != 1:
        raise refuse(dotted, "a job reads one volume; run one job per volume", cfg.get(dotted))
    name = names[0]
    path = name if cfg.get("DATASET.IS_ABSOLUTE_PATH") else posixpath.join(dirs[0], name)
    if name.endswith(".txt") or "*" in name:
        raise refuse(
            dotted, "file lists and globs of 2D images are not read; store the stack as one volume", name
        )
    if not path.rstrip("/").lower().endswith(READABLE) and not re.search(r"\.(zarr|n5)/", path.lower()):
        raise refuse(
            dotted,
            "the service reads HDF5, zarr, N5 and TileDataset .json volumes "
            "(convert TIFF/PNG stacks to HDF5)",
            name,
        )
    if cfg.get("DATASET.DO_CHUNK_TITLE") and not path.endswith(".json"):
        raise refuse(dotted, "DATASET.DO_CHUNK_TITLE reads a TileDataset .json", name)
    section: dict[str, Any] = {"path": path}
    if path.lower().endswith((".h5", ".hdf5")) and first_dataset is not None:
        dataset = first_dataset(path)
        if dataset is not None:
            section["dataset"] = dataset
    return section


def _source(cfg: PytcConfig, key: str) -> str:
    """Where the user set it: under --inference PyTC copies INFERENCE.IMAGE_NAME over DATASET's."""
    return f"INFERENCE.{key}" if cfg.inference and key == "IMAGE_NAME" else f"DATASET.{key}"


def _names(value: Any, dotted: str) -> list[str]:
    if value is None:
        raise SpecError(dotted, "is not set: name the volume (a trailing KEY VALUE may give it)")
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split("@")
