"""Training documents -> TrainingJob, and the checks against the data; every error names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.documents.loading import load_job_file
from service.documents.training import parse_training
from service.errors import PathOutsideRootsError
from tests.training_helpers import training_doc, write_data
from tests.unit.service.documents.examples import CONTRACT_TRAINING, minimal
from volumes.box import Box
from workers.errors import SpecError
from workers.training.checks import validate_training_against_data
from workers.training.job import TrainingJob


def parse(doc: dict[str, Any], root: Path) -> TrainingJob:
    return parse_training(doc, [root])


def spec_error(doc: dict[str, Any], root: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse(doc, root)
    return caught.value


def test_the_contract_document(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(CONTRACT_TRAINING)
    job = parse(load_job_file(tmp_path / "job.yaml"), tmp_path)
    assert job.data.image.path == str(tmp_path / "data" / "train.zarr") and job.data.image.dataset == "raw"
    assert job.data.valid_mask is not None and job.data.roi == Box((0, 0, 0), (64, 512, 512))
    assert job.model.init == str(tmp_path / "runs/old/checkpoint_05000.pth.tar")
    assert [h.kind for h in job.heads] == ["binary"] and job.out_channels == 1
    assert job.solver.optimizer.kind == "adamw" and job.solver.save_every == 500
    assert job.solver.schedule.kind == "constant"
    assert job.sampling.patch_size == (17, 129, 129) and job.sampling.min_foreground == 1
    assert job.sampling.valid_ratio == 0.5 and job.sampling.reject_probability == 0.95
    assert job.sampling.max_tries == 50
    assert job.checkpoint.dir == str(tmp_path / "runs" / "mito") and job.checkpoint.keep_last == 3
    assert job.register_as == "mito-v2"


def test_extensions(tmp_path: Path) -> None:
    doc = training_doc(
        **{
            "targets": [
                "binary",
                {"kind": "affinity", "loss": {"dice": 0.0}},
                {"kind": "semantic", "classes": 3},
            ],
            "model.config.out_channels": 7,
            "solver.optimizer": "sgd",
            "solver.momentum": 0.8,
            "solver.schedule": {"kind": "warmup_cosine", "warmup": 2},
            "solver.clip_grad_norm": 1.0,
            "sampling.reject": False,
            "sampling.augment": {"elastic": 0.5, "missing_section": 0.1},
            "validation": {"image": {"path": "v.zarr"}, "label": {"path": "v.zarr"}, "every": 3},
        }
    )
    job = parse(doc, tmp_path)
    assert [h.channels for h in job.heads] == [1, 3, 3]
    assert job.heads[1].loss.dice == 0.0 and job.heads[1].loss.bce == 1.0
    assert job.heads[2].loss.ce == 1.0 and job.heads[2].loss.bce == 0.0
    assert job.solver.optimizer.momentum == 0.8 and job.solver.schedule.warmup == 2
    assert job.sampling.min_foreground == 0 and job.sampling.augment.elastic == 0.5
    assert job.validation is not None and job.validation.every == 3
    assert parse(training_doc(**{"solver.schedule": "constant"}), tmp_path).solver.schedule.kind == "constant"


def test_job_key_ignores_what_does_not_change_the_weights(tmp_path: Path) -> None:
    key = parse(training_doc(), tmp_path).job_key()
    same = training_doc(
        **{
            "solver.save_every": 3,
            "checkpoint.keep_last": 1,
            "register_as": "x",
            "sampling.prefetch": {"threads": 3, "depth": 2, "cache_mb": 0},
        }
    )
    assert parse(same, tmp_path).job_key() == key
    assert parse(training_doc(**{"solver.seed": 1}), tmp_path).job_key() != key
    assert parse(training_doc(**{"solver.iterations": 7}), tmp_path).job_key() != key


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model.config.out_channels": 2}, "model.config.out_channels", "need 1"),
        ({"targets": ["semantic"]}, "targets[0].classes", "classes"),
        ({"targets": [{"kind": "binary", "classes": 2}]}, "targets[0].classes", "only semantic"),
        ({"targets": [{"kind": "binary", "loss": {"ce": 1.0}}]}, "targets[0].loss.ce", "semantic"),
        (
            {"targets": [{"kind": "binary", "loss": {"bce": 0, "dice": 0}}]},
            "targets[0].loss",
            "learn nothing",
        ),
        ({"targets": ["contour"]}, "targets[0].kind", "binary"),
        ({"targets": []}, "targets", "at least 1"),
        ({"solver.schedule": {"kind": "step"}}, "solver.schedule", "milestones"),
        ({"solver.schedule": {"kind": "warmup_cosine", "warmup": 6}}, "solver.schedule.warmup", "6"),
        ({"solver.optimizer": "lamb"}, "solver.optimizer", "adamw"),
        ({"solver.iterations": 0}, "solver.iterations", "greater than 0"),
        ({"model.init": "a.pth", "checkpoint.resume_from": "b.pth"}, "model.init", "not both"),
        ({"checkpoint.restart": True}, "checkpoint.restart", "resume_from"),
        ({"register_as": "bad name/x"}, "register_as", "pattern"),
        ({"sampling.prefetch": {"threads": 0}}, "sampling.prefetch.threads", "1"),
        ({"sampling.reject": {"probabilty": 1}}, "sampling.reject.probabilty", "probability"),
    ],
)
def test_bad_documents_name_the_field(
    tmp_path: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    err = spec_error(training_doc(**changes), tmp_path)
    assert err.field == field, err.errors
    assert words in err.reason


def test_paths_stay_in_the_roots(tmp_path: Path) -> None:
    for dotted in ("checkpoint.dir", "model.init", "data.label.path"):
        with pytest.raises(PathOutsideRootsError) as caught:
            parse(training_doc(**{dotted: "/elsewhere/x"}), tmp_path)
        assert caught.value.field == dotted
    outside = _two_volumes(label={"path": "../x.zarr", "dataset": "mito"})
    with pytest.raises(PathOutsideRootsError) as caught:
        parse(training_doc(**{"data.image": None, "data.label": None, "data.volumes": outside}), tmp_path)
    assert caught.value.field == "data.volumes[1].label.path"


@pytest.mark.parametrize("kind", ["inference", "train", None])
def test_any_other_kind_is_refused_on_kind(tmp_path: Path, kind: Any) -> None:
    err = spec_error(training_doc(kind=None) | {"kind": kind}, tmp_path)
    assert (err.field, err.reason) == ("kind", f"expected 'training' here, got {kind!r}")


def test_a_document_without_kind_is_no_training_job(tmp_path: Path) -> None:
    assert spec_error(training_doc(kind=None), tmp_path).field == "kind"
    assert spec_error(minimal(), tmp_path).field == "kind"


# --- against the data -------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_data(tmp_path)
    return tmp_path


def data_error(root: Path, **changes: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        validate_training_against_data(parse(training_doc(**changes), root))
    return caught.value


def test_valid_job_passes(data_root: Path) -> None:
    validate_training_against_data(parse(training_doc(), data_root))


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"data.label.dataset": "short"}, "data.label", "differs"),
        ({"data.valid_mask": {"path": "em.zarr", "dataset": "short"}}, "data.valid_mask", "differs"),
        ({"sampling.patch_size": [13, 17, 17]}, "sampling.patch_size", "larger"),
        ({"data.roi": {"offset": [0, 0, 0], "shape": [2, 48, 48]}}, "sampling.patch_size", "data.roi"),
        ({"data.roi": {"offset": [5, 0, 0], "shape": [12, 48, 48]}}, "data.roi", "outside"),
        ({"data.image.dataset": "nope"}, "data.image", "not found"),
        ({"model.config.in_channels": 2}, "model.config.in_channels", "image has 1"),
        ({"checkpoint.resume_from": "runs/none.pth.tar"}, "checkpoint.resume_from", "does not exist"),
        (
            {
                "validation": {
                    "image": {"path": "em.zarr", "dataset": "raw"},
                    "label": {"path": "em.zarr", "dataset": "short"},
                    "every": 2,
                }
            },
            "validation.label",
            "differs",
        ),
    ],
)
def test_bad_data_names_the_field(data_root: Path, changes: dict[str, Any], field: str, words: str) -> None:
    err = data_error(data_root, **changes)
    assert err.field == field, str(err)
    assert words in err.reason


def test_float_labels_are_refused(data_root: Path) -> None:
    import numpy as np
    import zarr

    zarr.open_group(str(data_root / "em.zarr"), mode="a").create_array(
        "prob", data=np.zeros((12, 48, 48), np.float32)
    )
    assert data_error(data_root, **{"data.label.dataset": "prob"}).field == "data.label"


def test_yaml_round_trip(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(training_doc()))
    assert parse(load_job_file(tmp_path / "job.yaml"), tmp_path).solver.iterations == 6


# --- several volumes, label transforms, z transposes ---------------------------------------------


def _two_volumes(**second: Any) -> list[dict[str, Any]]:
    first = {"image": {"path": "em.zarr", "dataset": "raw"}, "label": {"path": "em.zarr", "dataset": "mito"}}
    return [first, {**first, "label": {"path": "em.zarr", "dataset": "cells"}, **second}]


def test_several_volumes(data_root: Path) -> None:
    roi = {"offset": [0, 0, 0], "shape": [6, 48, 48]}
    doc = training_doc(**{"data.image": None, "data.label": None, "data.volumes": _two_volumes(roi=roi)})
    job = parse(doc, data_root)
    assert [v.label.dataset for v in job.data.volumes] == ["mito", "cells"]
    assert job.data.volumes[1].roi == Box((0, 0, 0), (6, 48, 48)) and job.data.roi is None
    assert job.data.where(1) == "data.volumes[1]"
    validate_training_against_data(job)
    single = parse(training_doc(), data_root)
    assert single.job_key() != job.job_key() and single.data.where(0) == "data"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"data.volumes": _two_volumes()}, "data.image", "not both"),
        ({"data.image": None, "data.label": None}, "data.image", "data.volumes"),
        ({"data.label": None}, "data.label", "is required"),
        ({"data.image": None, "data.label": None, "data.volumes": []}, "data.volumes", "at least 1"),
    ],
)
def test_one_volume_or_several_never_both(
    tmp_path: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    err = spec_error(training_doc(**changes), tmp_path)
    assert err.field == field and words in err.reason


@pytest.mark.parametrize(
    ("second", "field", "words"),
    [
        ({"label": {"path": "em.zarr", "dataset": "short"}}, "data.volumes[1].label", "differs"),
        ({"image": {"path": "em.zarr", "dataset": "nope"}}, "data.volumes[1].image", "not found"),
        ({"valid_mask": {"path": "em.zarr", "dataset": "short"}}, "data.volumes[1].valid_mask", "differs"),
        ({"roi": {"offset": [0, 0, 0], "shape": [2, 48, 48]}}, "sampling.patch_size", "data.volumes[1].roi"),
    ],
)
def test_each_volumes_data_is_checked_by_its_place(
    data_root: Path, second: dict[str, Any], field: str, words: str
) -> None:
    doc = training_doc(**{"data.image": None, "data.label": None, "data.volumes": _two_volumes(**second)})
    with pytest.raises(SpecError) as caught:
        validate_training_against_data(parse(doc, data_root))
    assert caught.value.field == field and words in caught.value.reason, caught.value


def test_label_transforms_and_ztranspose(tmp_path: Path) -> None:
    doc = training_doc(
        **{
            "targets": [{"kind": "binary", "label_erosion": 2}, {"kind": "affinity", "label_dilation": 1}],
            "model.config.out_channels": 4,
            "sampling.patch_size": [9, 17, 9],
            "sampling.augment": {"ztranspose": True},
        }
    )
    job = parse(doc, tmp_path)
    assert [(h.label_erosion, h.label_dilation) for h in job.heads] == [(2, 0), (0, 1)]
    assert job.sampling.augment.ztranspose
    assert job.heads[0].to_json()["label_erosion"] == 2 and "label_dilation" not in job.heads[0].to_json()
    bad = training_doc(**{"sampling.augment": {"ztranspose": True}})  # patch [3, 17, 17]
    err = spec_error(bad, tmp_path)
    assert err.field == "sampling.augment.ztranspose" and "[3, 17, 17]" in err.reason
    err = spec_error(training_doc(**{"targets": [{"kind": "binary", "label_erosion": -1}]}), tmp_path)
    assert err.field == "targets[0].label_erosion" and "greater than or equal to 0" in err.reason


def test_job_keys_of_documents_without_the_new_fields_are_unchanged() -> None:
    """Runs keyed before several volumes, label transforms and z transposes keep their keys (and so
    resume from their checkpoints): keys computed with the code before them."""
    two_heads = training_doc(
        **{
            "targets": ["binary", "boundary"],
            "model.config.out_channels": 2,
            "data.valid_mask": {"path": "em.zarr", "dataset": "mask"},
            "sampling.augment": {"elastic": 0.5},
        }
    )
    assert parse_training(training_doc(), ["/srv/pytc-data"]).job_key() == "84d052e70a0058eddcd7aca8"
    assert parse_training(two_heads, ["/srv/pytc-data"]).job_key() == "bb7e8c31b99deafa697f0051"
