"""PyTC v1 configs as our job documents (service.pytc): the mapping, refusals by name, every key
accounted for, and every base + experiment pair of PyTC v1's ``configs/`` folder.

``tests/data/pytc_configs/configs`` is a copy of the YAML files of PyTC v1's ``configs/`` folder
(branch v1.0, commit 7ec3284e), kept as data. Each pair converts to a document our document model
parses, or is refused naming a key; the outcomes are the table in docs/pytc.md, checked here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.documents.inference import InferenceDocument, parse_inference
from service.documents.sections import validate
from service.documents.training import TrainingDocument
from service.errors import SpecError
from service.kinds.pytc_config import pytc_field
from service.pytc import keys
from service.pytc.config import load_pytc_config, pytc_defaults
from service.pytc.convert import check_refused, convert_pytc, inference_documents, volume_paths
from service.pytc.training import training_document

DATA = Path(__file__).resolve().parents[3] / "data"
CONFIGS = DATA / "pytc_configs" / "configs"
GOLDEN = DATA / "pytc_golden" / "unet3d-gaussian-tta.yaml"
DOCS = Path(__file__).resolve().parents[4] / "docs" / "pytc.md"
DOTTED = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")


def config_pairs() -> list[tuple[Path, Path | None]]:
    """As PyTC's configs are used: each folder's ``*Base*`` file with each other file there; a
    folder without a base holds configs used alone."""
    files = sorted(CONFIGS.rglob("*.yaml"))
    pairs: list[tuple[Path, Path | None]] = []
    for folder in sorted({f.parent for f in files}):
        inside = [f for f in files if f.parent == folder]
        bases = [f for f in inside if "Base" in f.stem]
        others = [f for f in inside if "Base" not in f.stem]
        pairs += [(b, e) for b in bases for e in others] if bases else [(e, None) for e in others]
    return pairs


def outcome(base: Path, experiment: Path | None, inference: bool) -> str:
    texts = [(base.name, base.read_text())] + (
        [(experiment.name, experiment.read_text())] if experiment else []
    )
    try:
        conversion = convert_pytc(texts, inference=inference)
    except SpecError as err:
        assert DOTTED.match(err.field), err  # a PyTC key, dotted
        return f"refused: `{err.field}`"
    model = InferenceDocument if inference else TrainingDocument
    validate(model, conversion.document)  # our document model parses it
    return f"converts ({conversion.document['model']['architecture']})"


def documented_rows() -> dict[tuple[str, str], tuple[str, str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].endswith(".yaml`"):
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = (cells[2], cells[3])
    return rows


def test_every_upstream_config_pair_converts_or_is_refused_by_key_as_documented() -> None:
    documented = documented_rows()
    pairs = config_pairs()
    assert len(pairs) >= 60  # PyTC v1's configs folder
    for base, experiment in pairs:
        key = (str(base.relative_to(CONFIGS)), str(experiment.relative_to(CONFIGS)) if experiment else "-")
        got = (outcome(base, experiment, True), outcome(base, experiment, False))
        assert documented.get(key) == got, (key, got)
    assert len(documented) == len(pairs)


def _converted(overrides: list[str], inference: bool) -> dict[str, Any]:
    return convert_pytc([("golden", GOLDEN.read_text())], overrides, inference=inference).document


def test_unet3d_inference_mapping(tmp_path: Path) -> None:
    doc = _converted(["INFERENCE.BLENDING", "bump", "INFERENCE.AUG_MODE", "max"], inference=True)
    assert doc["model"] == {
        "architecture": "unet_3d",
        "config": {
            "block_type": "residual", "in_channel": 1, "out_channel": 2, "filters": [4, 6, 8],
            "ks": [3, 3, 5, 3, 3], "blocks": [2, 2, 2, 2], "attn": "squeeze_excitation",
            "is_isotropic": False, "isotropy": [False, False, True], "pad_mode": "replicate",
            "act_mode": "elu", "norm_mode": "bn",
            "pooling": False,
        },
    }  # fmt: skip
    assert doc["window"] == {
        "patch_size": [5, 17, 17], "stride": [2, 8, 8], "blending": "bump", "pad_size": [2, 4, 4],
        "pad_mode": "reflect", "batch_size": 2, "raw_heads": "pytc", "tta": {"variants": 4, "reduce": "max"},
    }  # fmt: skip
    assert doc["input"] == {"path": "data/im.h5", "normalize": {"mean": 0.5, "std": 0.5}}
    assert doc["output"] == {
        "path": "out/result.zarr", "dataset": "vol0", "dtype": "uint8", "uint8_rounding": "truncate",
        "heads": [1, 1], "activation": ["sigmoid", "none"],
    }  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "im.h5").touch()
    assert doc["compute"] == {"memory_format": "contiguous"}  # PyTC's tensors, PyTC's last bits
    job = parse_inference({**doc, "input": {**doc["input"], "dataset": "main"}}, [tmp_path])
    assert job.window.raw_heads == "pytc" and job.output.uint8_rounding == "truncate"
    assert job.compute.memory_format == "contiguous"


def test_training_mapping() -> None:
    overrides = ["DATASET.LABEL_NAME", "label.h5", "SOLVER.NAME", "AdamW", "SOLVER.ITERATION_RESTART", "True"]
    doc = _converted(overrides, inference=False)
    validate(TrainingDocument, doc)
    assert doc["data"]["image"] == {"path": "data/train.h5"} and doc["data"]["label"] == {
        "path": "data/label.h5"
    }
    assert doc["targets"] == [
        {"kind": "binary", "loss": {"bce": 1.0, "dice": 0.0, "ce": 0.0}},
        {"kind": "boundary", "loss": {"bce": 1.0, "dice": 0.0, "ce": 0.0}},
    ]
    assert doc["solver"]["optimizer"] == "adamw" and doc["solver"]["schedule"]["kind"] == "step"
    assert doc["solver"]["schedule"]["milestones"] == [30000, 35000] and doc["checkpoint"]["restart"] is True
    assert doc["checkpoint"]["dir"] == "out/" and doc["sampling"]["patch_size"] == [5, 17, 17]


@pytest.mark.parametrize(
    ("overrides", "inference", "field"),
    [
        (["MODEL.ARCHITECTURE", "unet_4d"], True, "MODEL.ARCHITECTURE"),
        (["INFERENCE.DO_EVAL", "False"], True, "INFERENCE.DO_EVAL"),
        (["INFERENCE.UNPAD", "False"], True, "INFERENCE.UNPAD"),
        (["INFERENCE.OUTPUT_SCALE", "[1.0, 0.5, 0.5]"], True, "INFERENCE.OUTPUT_SCALE"),
        (["DATASET.DATA_SCALE", "[1.0, 0.5, 0.5]"], True, "DATASET.DATA_SCALE"),
        (["INFERENCE.OUTPUT_ACT", "['relu', 'none']"], True, "INFERENCE.OUTPUT_ACT"),  # a TTA mean of relu
        (["INFERENCE.OUTPUT_ACT", "['gelu', 'none']"], True, "INFERENCE.OUTPUT_ACT"),
        (["INFERENCE.IMAGE_NAME", "im.bmp"], True, "INFERENCE.IMAGE_NAME"),
        (["INFERENCE.IMAGE_NAME", "a.h5@images/*.png"], True, "INFERENCE.IMAGE_NAME"),  # one volume each
        (["INFERENCE.IMAGE_NAME", "images/*.h5"], True, "INFERENCE.IMAGE_NAME"),
        (["INFERENCE.IMAGE_NAME", "list.txt"], True, "INFERENCE.IMAGE_NAME"),
        (["DATASET.IMAGE_NAME", "a.h5@b.h5"], False, "DATASET.LABEL_NAME"),  # one label per image
        (
            ["INFERENCE.IMAGE_NAME", "a.h5@b.h5@c.h5", "INFERENCE.INPUT_PATH", "x/@y/"],
            True,
            "DATASET.INPUT_PATH",
        ),
        (
            [
                "INFERENCE.IMAGE_NAME",
                "a.h5@b.h5",
                "INFERENCE.DO_SINGLY",
                "True",
                "INFERENCE.DO_SINGLY_STEP",
                "0",
            ],
            True,
            "INFERENCE.DO_SINGLY_STEP",
        ),
        (
            [
                "INFERENCE.IMAGE_NAME",
                "a.h5@b.h5",
                "INFERENCE.DO_SINGLY",
                "True",
                "INFERENCE.DO_SINGLY_START_INDEX",
                "2",
            ],
            True,
            "INFERENCE.DO_SINGLY_START_INDEX",
        ),
        (["INFERENCE.DO_SINGLY", "True", "INFERENCE.OUTPUT_NAME", "'{arr}'"], True, "INFERENCE.OUTPUT_NAME"),
        (["MODEL.OUTPUT_SIZE", "[3, 9, 9]"], True, "MODEL.OUTPUT_SIZE"),
        (["DATASET.PAD_MODE", "symmetric"], True, "DATASET.PAD_MODE"),
        (["MODEL.TARGET_OPT", "['0']"], True, "MODEL.TARGET_OPT"),  # 1 channel for OUT_PLANES 2
        (["AUGMENTOR.FLIP.DO_ZTRANS", "1"], False, "AUGMENTOR.FLIP.DO_ZTRANS"),  # a patch of z 5, x 17
        (["MODEL.LABEL_EROSION", "[1]"], False, "MODEL.LABEL_EROSION"),  # two targets
        (["MODEL.LABEL_DILATION", "-1"], False, "MODEL.LABEL_DILATION"),
        (["SOLVER.LR_SCHEDULER_NAME", "CosineAnnealingLR"], False, "SOLVER.LR_SCHEDULER_NAME"),
        (
            ["MODEL.LOSS_OPTION", "[['WeightedMSE'], ['WeightedBCEWithLogitsLoss']]"],
            False,
            "MODEL.LOSS_OPTION",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_its_key(
    overrides: list[str], inference: bool, field: str
) -> None:
    with pytest.raises(SpecError) as caught:
        _converted([*overrides, "DATASET.LABEL_NAME", "label.h5"], inference)
    assert caught.value.field == field


def test_training_only_keys_do_not_stop_an_inference_conversion() -> None:
    doc = _converted(["AUGMENTOR.FLIP.DO_ZTRANS", "1", "MODEL.LABEL_EROSION", "2"], inference=True)
    assert doc["kind"] == "inference"


def test_architectures_are_written_with_build_models_keys() -> None:
    """As PyTC's build_model passes them, so models/pytc builds them under PyTC's names."""
    doc = _converted(
        ["MODEL.ARCHITECTURE", "unet_plus_3d", "MODEL.BLOCK_TYPE", "residual_se"], inference=True
    )
    assert doc["model"]["architecture"] == "unet_plus_3d"
    config = doc["model"]["config"]
    assert config["block_type"] == "residual_se" and config["in_channel"] == 1 and config["out_channel"] == 2
    assert config["pooling"] is False and config["is_isotropic"] is False and "backbone_type" not in config
    unetr = _converted(["MODEL.ARCHITECTURE", "unetr"], inference=True)["model"]["config"]
    assert unetr["img_size"] == [5, 17, 17] and unetr["hidden_size"] == 768 and unetr["num_heads"] == 12
    botnet = ["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.BACKBONE", "botnet"]
    fpn = _converted(botnet, inference=True)["model"]["config"]
    assert fpn["backbone_type"] == "botnet" and fpn["fmap_size"] == [5, 17, 17] and fpn["deploy"] is False


def _leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def _matches(key: str, patterns: set[str]) -> bool:
    return any(re.fullmatch(p.replace(".", r"\.").replace("*", r"[A-Z0-9_]+"), key) for p in patterns)


def test_every_key_of_pytcs_tree_is_read_ignored_or_refused() -> None:
    """No key is dropped unsaid: each of PyTC's keys is read by a conversion, or listed with its
    reason (ignored, refused unless default, approximated in training, checked at admission)."""
    read: set[str] = set()
    variants = [
        [],
        ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "DATASET.REJECT_SAMPLING.SIZE_THRES", "10"],
        ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"],
        ["INFERENCE.DO_SINGLY", "True", "INFERENCE.IMAGE_NAME", "a.h5@b.h5"],
        *[["MODEL.ARCHITECTURE", arch] for arch in ("unetr", "swinunetr", "fpn_3d", "deeplabv3a")],
    ]
    for overrides in variants:
        for inference in (True, False):
            cfg = load_pytc_config(
                [("g", GOLDEN.read_text())], [*overrides, "DATASET.LABEL_NAME", "l.h5"], inference=inference
            )
            check_refused(cfg)
            if inference:
                inference_documents(cfg, None, None)
            else:
                training_document(cfg, None, lambda key, cfg=cfg: volume_paths(cfg, key, None), [])
            read |= cfg.read
    listed = {
        *keys.IGNORED, *keys.REFUSED_UNLESS_DEFAULT, *keys.REFUSED_IN_TRAINING, *keys.REFUSED_IN_INFERENCE,
        *keys.MERGED_BY_INFERENCE, *keys.APPROXIMATED_IN_TRAINING, *keys.CHECKED_AT_ADMISSION,
    }  # fmt: skip
    unaccounted = sorted(k for k in _leaves(pytc_defaults()) if k not in read and not _matches(k, listed))
    assert unaccounted == []


def test_errors_in_the_converted_document_name_the_pytc_key() -> None:
    assert pytc_field("window.patch_size", "too big") == "MODEL.INPUT_SIZE"
    assert pytc_field("window.tta.variants", "") == "INFERENCE.AUG_NUM"
    assert (
        pytc_field("model.config", "unet_3d: config key 'block_type' must be a string") == "MODEL.BLOCK_TYPE"
    )
    assert (
        pytc_field("model.config", "fpn_3d: config key 'ks' must be a list of ints") == "MODEL.KERNEL_SIZES"
    )
    assert pytc_field("model.config", "unknown architecture 'unet_2d'") == "MODEL.ARCHITECTURE"
    assert pytc_field("model.checkpoint", "does not exist") == "--checkpoint"
    assert pytc_field("targets[1].loss", "") == "MODEL.TARGET_OPT"


@pytest.mark.parametrize(
    ("act", "tta"),
    [
        ("relu", ["INFERENCE.AUG_NUM", "None"]),
        ("elu", ["INFERENCE.AUG_MODE", "min"]),
        ("relu", ["INFERENCE.AUG_MODE", "max"]),
    ],
)
def test_relu_and_elu_heads_are_raw_heads_clipped_as_pytc_clips_them(act: str, tta: list[str]) -> None:
    """PyTC clips every window at 0 after the activation: relu(x) and elu(x) are then max(x, 0),
    what window.raw_heads: pytc does to a raw head; a TTA min or max of them is that of x, clipped."""
    doc = _converted(["INFERENCE.OUTPUT_ACT", f"['{act}', 'sigmoid']", *tta], inference=True)
    assert doc["output"]["activation"] == ["none", "sigmoid"] and doc["window"]["raw_heads"] == "pytc"


def test_several_volumes_are_one_document_each_where_pytc_writes_them() -> None:
    """Trainer.test: one output file, a dataset per volume; INPUT_PATH one folder for all, or one each."""
    names = ["INFERENCE.IMAGE_NAME", "a.tif@b.h5@c.zarr/raw@s_*.png", "INFERENCE.INPUT_PATH", "x/@y/@z/@w/"]
    conversion = convert_pytc([("golden", GOLDEN.read_text())], names, inference=True)
    assert [
        (d["input"]["path"], d["output"]["path"], d["output"]["dataset"]) for d in conversion.documents
    ] == [
        ("x/a.tif", "out/result.zarr", "vol0"),
        ("y/b.h5", "out/result.zarr", "vol1"),
        ("z/c.zarr/raw", "out/result.zarr", "vol2"),
        ("w/s_*.png", "out/result.zarr", "vol3"),
    ]
    for doc in conversion.documents:
        validate(InferenceDocument, doc)
    again = convert_pytc([("golden", GOLDEN.read_text())], names, inference=True)
    assert again.documents == conversion.documents  # deterministic


def test_do_singly_writes_one_file_per_volume_named_as_pytc_names_it() -> None:
    """Trainer.test_singly: OUTPUT_PATH/<IMAGE_NAME>, or <IMAGE_NAME>_result.h5 beside the inputs."""
    singly = ["INFERENCE.IMAGE_NAME", "s/a.h5@b.tif@c.h5", "INFERENCE.DO_SINGLY", "True"]
    docs = convert_pytc([("g", GOLDEN.read_text())], singly, inference=True).documents
    assert [(d["output"]["path"], d["output"]["dataset"]) for d in docs] == [
        ("out/s/a.zarr", "vol0"), ("out/b.zarr", "vol0"), ("out/c.zarr", "vol0"),
    ]  # fmt: skip
    beside = [*singly, "INFERENCE.OUTPUT_PATH", "data/", "INFERENCE.DO_SINGLY_START_INDEX", "1"]
    docs = convert_pytc([("g", GOLDEN.read_text())], beside, inference=True).documents
    assert [d["output"]["path"] for d in docs] == ["data/b.tif_result.zarr", "data/c.h5_result.zarr"]


def test_refusals_say_what_pytc_does() -> None:
    with pytest.raises(SpecError, match=r"zoom\(volume, DATA_SCALE, order=3\)") as caught:
        _converted(["DATASET.DATA_SCALE", "[1.0, 2.0, 2.0]"], inference=True)
    assert caught.value.field == "DATASET.DATA_SCALE"
    with pytest.raises(SpecError, match="VAST") as caught:
        _converted(["DATASET.LABEL_VAST", "True", "DATASET.LABEL_NAME", "l.h5"], inference=False)
    assert caught.value.field == "DATASET.LABEL_VAST"


def test_several_training_volumes_label_transforms_and_z_transposes() -> None:
    """CREMI's three volumes are one training job's data.volumes, labels and masks paired in order;
    MODEL.LABEL_EROSION / LABEL_DILATION go to each target; FLIP.DO_ZTRANS 1 to ztranspose."""
    overrides = [
        "DATASET.IMAGE_NAME", "a/im.h5@b/im.h5", "DATASET.LABEL_NAME", "a/seg.h5@b/seg.h5",
        "DATASET.VALID_MASK_NAME", "a/m.h5@b/m.h5", "DATASET.INPUT_PATH", "x/@y/",
        "MODEL.LABEL_EROSION", "[1, 2, 3]", "MODEL.LABEL_DILATION", "1",
        "MODEL.INPUT_SIZE", "[9, 17, 9]", "MODEL.OUTPUT_SIZE", "[9, 17, 9]", "AUGMENTOR.FLIP.DO_ZTRANS", "1",
    ]  # fmt: skip
    conversion = convert_pytc([("golden", GOLDEN.read_text())], overrides)
    doc = conversion.document
    validate(TrainingDocument, doc)
    assert doc["data"]["volumes"] == [
        {"image": {"path": "x/a/im.h5"}, "label": {"path": "x/a/seg.h5"}, "valid_mask": {"path": "x/a/m.h5"}},
        {"image": {"path": "y/b/im.h5"}, "label": {"path": "y/b/seg.h5"}, "valid_mask": {"path": "y/b/m.h5"}},
    ]
    assert "image" not in doc["data"] and doc["data"]["normalize"] == {"mean": 0.5, "std": 0.5}
    assert [(t["label_erosion"], t["label_dilation"]) for t in doc["targets"]] == [(1, 1), (2, 1)]
    assert any("MODEL.LABEL_EROSION [1, 2, 3]: widths beyond the 2 target(s)" in n for n in conversion.notes)
    assert doc["sampling"]["augment"]["ztranspose"] is True
    assert _converted(["DATASET.LABEL_NAME", "l.h5"], False)["sampling"]["augment"]["ztranspose"] is False
    with pytest.raises(SpecError, match="IMAGE_NAME names 2, this 1") as caught:
        _converted(["DATASET.IMAGE_NAME", "a.h5@b.h5", "DATASET.LABEL_NAME", "l.h5"], False)
    assert caught.value.field == "DATASET.LABEL_NAME"
    for field, pytc in (
        ("data.volumes[1].label", "DATASET.LABEL_NAME"),
        ("targets[0].label_erosion", "MODEL.LABEL_EROSION"),
        ("sampling.augment.ztranspose", "AUGMENTOR.FLIP.DO_ZTRANS"),
    ):
        assert pytc_field(field, "") == pytc
