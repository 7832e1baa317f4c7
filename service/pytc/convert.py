"""A PyTC v1 configuration as our job document: inference (``--inference``) or training.

What PyTC's ``Trainer.test`` does becomes the inference document field by field (docs/pytc.md has
the table): the window is ``MODEL.INPUT_SIZE`` stepping by ``INFERENCE.STRIDE`` over the volume
padded by ``DATASET.PAD_SIZE`` (``INFERENCE.PAD_SIZE`` under ``--inference``), blended by
``INFERENCE.BLENDING``, with ``INFERENCE.AUG_NUM``/``AUG_MODE`` test-time augmentation and one
``INFERENCE.OUTPUT_ACT`` per ``MODEL.TARGET_OPT`` head; the input is read as PyTC reads it
(``/ 255``, then ``(x - DATASET.MEAN) / DATASET.STD``); the output is uint8 truncated as PyTC writes
it, each window clipped at 0 and TTA min/max started as PyTC starts them (``window.raw_heads: pytc``),
and the network runs PyTC's contiguous tensors (``compute.memory_format: contiguous``).
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

# HDF5, TIFF and PNG stacks (a .png name may be a pattern) and TileDataset JSON as PyTC reads them;
# zarr and N5 (an array, or a container's array as ``vol.zarr/raw``) beyond PyTC: what the service reads
READABLE = (".h5", ".hdf5", ".tif", ".tiff", ".png", ".json", ".zarr", ".n5")
# PyTC's INFERENCE.OUTPUT_ACT -> ours. relu and elu are "none": PyTC clips every window at 0 after
# them (window.raw_heads: pytc does so too), where relu(x) and elu(x) are both max(x, 0); and as
# both keep order, a TTA min (from 1) or max (from 0) of them is that of x, clipped. A TTA mean of
# them is not (refused).
ACTIVATIONS = {
    "sigmoid": "sigmoid", "softmax": "softmax", "tanh": "tanh", "none": "none", "relu": "none", "elu": "none",
}  # fmt: skip
CLIPPED_LIKE_NONE = ("relu", "elu")


@dataclass(frozen=True)
class Conversion:
    """Our job documents (one per volume PyTC's ``IMAGE_NAME`` names: ``a.h5@b.h5``), and the PyTC
    defaults they only approximate (training), said aloud."""

    documents: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()

    @property
    def document(self) -> dict[str, Any]:
        """The first volume's document (the only one, but for several volumes)."""
        return self.documents[0]


def convert_pytc(
    texts: Sequence[tuple[str, str]],
    overrides: Sequence[str] = (),
    *,
    inference: bool = False,
    checkpoint: str | None = None,
    first_dataset: FirstDataset | None = None,
) -> Conversion:
    """PyTC config texts (base, then experiment: ``(name, text)``) and trailing ``KEY VALUE``
    overrides -> our job documents (plain mappings, ready for YAML or ``POST /v1/jobs``): one per
    input volume under ``inference``, as PyTC's ``Trainer.test`` predicts each (into one output,
    datasets ``vol0``, ``vol1``, ...); one training document."""
    cfg = load_pytc_config(texts, overrides, inference=inference)
    check_refused(cfg)
    if inference:
        return Conversion(tuple(inference_documents(cfg, checkpoint, first_dataset)))
    notes: list[str] = []
    document = training_document(cfg, checkpoint, lambda key: volume_paths(cfg, key, first_dataset), notes)
    return Conversion((document,), tuple(notes))


def check_refused(cfg: PytcConfig) -> None:
    """Keys we do not do, set to anything but PyTC's default, in the mode that reads them."""
    mode = REFUSED_IN_INFERENCE if cfg.inference else REFUSED_IN_TRAINING
    for key, reason in {**REFUSED_UNLESS_DEFAULT, **mode}.items():
        if not cfg.is_default(key):
            raise refuse(key, reason, cfg.get(key))


def inference_documents(
    cfg: PytcConfig, checkpoint: str | None, first_dataset: FirstDataset | None
) -> list[dict[str, Any]]:
    """One inference document per input volume PyTC predicts, in PyTC's order, each writing where
    PyTC writes that volume (:func:`output_places`)."""
    heads = target_heads(cfg)
    inputs = volume_paths(cfg, "IMAGE_NAME", first_dataset)
    return [
        {
            "kind": "inference",
            "input": {**inputs[index], "normalize": _normalize(cfg)},
            "model": model_section(cfg, checkpoint),
            "window": _window(cfg),
            "output": {**place, **_output(cfg, heads)},
            # PyTC runs contiguous tensors; channels-last rounds the last bits otherwise, which
            # truncation to uint8 can turn into a grey level (docs/pytc.md, "Same output as PyTC")
            "compute": {"memory_format": "contiguous"},
        }
        for index, place in output_places(cfg, len(inputs))
    ]


def output_places(cfg: PytcConfig, count: int) -> list[tuple[int, dict[str, str]]]:
    """(input index, ``{path, dataset}``) of each volume PyTC predicts, as PyTC names its outputs.

    ``Trainer.test`` writes one HDF5 file, ``OUTPUT_PATH/OUTPUT_NAME``, holding ``vol0``, ``vol1``,
    ... in ``IMAGE_NAME``'s order. ``Trainer.test_singly`` (``INFERENCE.DO_SINGLY``) predicts the
    volumes ``range(DO_SINGLY_START_INDEX, n, |DO_SINGLY_STEP|)`` (backwards for a negative step),
    each into its own file ``OUTPUT_PATH/<its IMAGE_NAME>``, or ``<its IMAGE_NAME>_result.h5``
    when ``OUTPUT_PATH`` is ``INPUT_PATH``, dataset ``vol0``. Ours are zarr: ``.h5`` becomes ``.zarr``.
    """
    out_dir = str(cfg.get("INFERENCE.OUTPUT_PATH") or cfg.get("DATASET.OUTPUT_PATH"))
    if not cfg.get("INFERENCE.DO_SINGLY"):
        path = posixpath.join(out_dir, _zarr_name(str(cfg.get("INFERENCE.OUTPUT_NAME"))))
        return [(index, {"path": path, "dataset": f"vol{index}"}) for index in range(count)]
    start, step = int(cfg.get("INFERENCE.DO_SINGLY_START_INDEX")), int(cfg.get("INFERENCE.DO_SINGLY_STEP"))
    if step == 0:
        raise refuse("INFERENCE.DO_SINGLY_STEP", "PyTC's range() of volumes needs a step other than 0", step)
    order = list(range(start, count, abs(step)))[:: -1 if step < 0 else 1]
    if not order:
        raise refuse(
            "INFERENCE.DO_SINGLY_START_INDEX",
            f"selects none of the {count} volumes of INFERENCE.IMAGE_NAME",
            start,
        )
    if "{" in str(cfg.get("INFERENCE.OUTPUT_NAME")):
        raise refuse(
            "INFERENCE.OUTPUT_NAME",
            "under DO_SINGLY PyTC evaluates a name with { as Python code per volume; "
            "name the outputs plainly",
            cfg.get("INFERENCE.OUTPUT_NAME"),
        )
    dirs = _names(cfg.get("DATASET.INPUT_PATH"), "DATASET.INPUT_PATH")
    if len(dirs) != 1:
        raise refuse(
            "DATASET.INPUT_PATH", "PyTC's DO_SINGLY takes one input folder", cfg.get("DATASET.INPUT_PATH")
        )
    names = _names(cfg.get("DATASET.IMAGE_NAME"), _source(cfg, "IMAGE_NAME"))
    beside = out_dir == dirs[0]  # PyTC: "same file location"
    return [
        (
            i,
            {
                "path": posixpath.join(out_dir, _zarr_name(names[i] + "_result.h5" if beside else names[i])),
                "dataset": "vol0",
            },
        )
        for i in order
    ]


def _zarr_name(name: str) -> str:
    """PyTC's HDF5 output name as our zarr's: its suffix replaced by ``.zarr``."""
    return (name.rsplit(".", 1)[0] if "." in posixpath.basename(name) else name) + ".zarr"


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
        if act in CLIPPED_LIKE_NONE and _tta_variants(cfg) > 1 and cfg.get("INFERENCE.AUG_MODE") == "mean":
            raise refuse(
                "INFERENCE.OUTPUT_ACT",
                f"PyTC averages {act}(x) over the TTA variants, which no output activation here "
                "computes; it equals a raw head clipped at 0 without TTA, or under INFERENCE.AUG_MODE "
                "min or max",
                act,
            )
        if act not in ACTIVATIONS:
            raise refuse(
                "INFERENCE.OUTPUT_ACT", "activations are sigmoid, softmax, tanh, relu, elu or none", act
            )
    return {
        "dtype": "uint8",
        "uint8_rounding": "truncate",
        "heads": [h[1] for h in heads],
        "activation": [ACTIVATIONS[a] for a in acts],
    }


def volume_paths(cfg: PytcConfig, key: str, first_dataset: FirstDataset | None) -> list[dict[str, Any]]:
    """``DATASET.INPUT_PATH`` joined with ``DATASET.<key>`` as PyTC's ``_make_path_list`` joins them
    (``@``-separated or a list; one folder for all, or one per volume): the volumes, each in a
    format the service reads; an HDF5 file's first dataset when PyTC would take it."""
    dotted = _source(cfg, key)
    names = _names(cfg.get(f"DATASET.{key}"), dotted)
    dirs = _names(cfg.get("DATASET.INPUT_PATH"), "DATASET.INPUT_PATH")
    absolute = bool(cfg.get("DATASET.IS_ABSOLUTE_PATH"))
    if not absolute and len(dirs) not in (1, len(names)):
        raise refuse(
            "DATASET.INPUT_PATH",
            f"PyTC joins one folder to every volume, or one folder to each; {len(dirs)} folders for "
            f"{len(names)} volumes",
            cfg.get("DATASET.INPUT_PATH"),
        )
    sections = []
    for index, name in enumerate(names):
        path = name if absolute else posixpath.join(dirs[index if len(dirs) > 1 else 0], name)
        sections.append(_volume_section(cfg, dotted, name, path, first_dataset))
    return sections


def _volume_section(
    cfg: PytcConfig, dotted: str, name: str, path: str, first_dataset: FirstDataset | None
) -> dict[str, Any]:
    if name.endswith(".txt"):
        raise refuse(
            dotted, "file lists are not read; name the volumes with @ (a.h5@b.h5), or stack them", name
        )
    if posixpath.basename(name) in ("*.png", "*.tif"):
        raise refuse(
            dotted,
            f"PyTC predicts each file {name} matches as its own one-section volume; name a pattern "
            "such as slice_*.png to read them as one stack, or list the volumes with @",
            name,
        )
    if "*" in name and not path.lower().endswith(".png"):
        raise refuse(dotted, "only a .png name may be a pattern of files (PyTC's readvol)", name)
    if not path.rstrip("/").lower().endswith(READABLE) and not re.search(r"\.(zarr|n5)/", path.lower()):
        raise refuse(
            dotted,
            "the service reads HDF5, TIFF, PNG, zarr, N5 and TileDataset .json volumes",
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
