"""Inference documents -> InferenceJob: every rule names its field; paths stay inside the data roots."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from models.ref import ModelRef
from service.documents.inference import parse_inference, stride_from_overlap
from service.documents.loading import load_job_file
from service.errors import PathOutsideRootsError
from tests.unit.service.documents.examples import CONTRACT_INFERENCE, minimal
from volumes.box import Box
from workers.errors import SpecError
from workers.inference.job import InferenceJob, Normalize


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data_root = tmp_path / "root"
    data_root.mkdir()
    return data_root


@pytest.fixture
def doc(tmp_path: Path) -> dict[str, Any]:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(CONTRACT_INFERENCE)
    return load_job_file(job_file)


def parse(doc: dict[str, Any], root: Path) -> InferenceJob:
    return parse_inference(doc, [root])


def spec_error(doc: dict[str, Any], root: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse(doc, root)
    return caught.value


def changed(doc: dict[str, Any], section: str, **values: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new.setdefault(section, {}).update(values)
    return new


# --- good documents ---------------------------------------------------------------------------------


def test_contract_example_parses_into_the_dataclasses(doc: dict[str, Any], root: Path) -> None:
    job = parse(doc, root)
    assert job.input.path == str(root / "data" / "em.zarr")
    assert job.input.dataset == "raw"
    assert job.input.roi == Box((0, 0, 0), (64, 512, 512))
    assert job.input.normalize == Normalize("auto")
    assert job.model == ModelRef("torchscript", path=str(root / "models" / "net.pt"))
    assert job.window.patch_size == (17, 129, 129)
    assert job.window.stride == (8, 64, 64)
    assert (job.window.blending, job.window.pad_mode, job.window.pad_size) == (
        "gaussian",
        "reflect",
        (0, 0, 0),
    )
    assert (job.window.batch_size, job.window.tta_variants, job.window.tta_reduce) == (4, 1, "mean")
    assert job.output.path == str(root / "out" / "pred.zarr")
    assert (job.output.dataset, job.output.format, job.output.dtype) == ("pred", "zarr3", "float32")
    assert (job.output.heads, job.output.activations) == ((2,), ("sigmoid",))
    assert (job.output.chunks, job.output.overwrite) == ((32, 256, 256), False)
    assert job.compute.block_shape == (64, 512, 512)
    assert (job.compute.device, job.compute.precision) == ("auto", "float32")
    assert job.compute.memory_format == "auto"
    assert json.loads(job.document) == doc
    assert job.document == json.dumps(doc, sort_keys=True, separators=(",", ":"))


def test_defaults_of_a_minimal_document(root: Path) -> None:
    job = parse(minimal(), root)
    assert job.input.roi is None and job.input.dataset is None
    assert job.window.stride == (8, 64, 64)  # 50% overlap by default
    assert job.output.heads == () and job.output.activations == ("none",)
    assert job.output.dataset == "pred" and job.output.chunks == (32, 256, 256)
    assert job.compute.block_shape is None


def test_same_document_same_job_and_layout_key(root: Path) -> None:
    assert parse(minimal(), root).layout_key("abc") == parse(minimal(), root).layout_key("abc")


@pytest.mark.parametrize(
    ("patch", "overlap", "stride"),
    [(17, 0.5, 8), (129, 0.5, 64), (128, 0.25, 96), (16, 0.0, 16), (1, 0.9, 1), (10, 0.99, 1)],
)
def test_overlap_to_stride_rule(patch: int, overlap: float, stride: int) -> None:
    assert stride_from_overlap(patch, overlap) == stride == max(1, int(patch * (1 - overlap)))


def test_overlap_scalar_and_per_axis(root: Path) -> None:
    job = parse(changed(minimal(), "window", overlap=0.25), root)
    assert job.window.stride == (12, 96, 96)
    job = parse(changed(minimal(), "window", overlap=[0, 0.5, 0.5]), root)
    assert job.window.stride == (17, 64, 64)


def test_normalize_mapping_and_none(root: Path) -> None:
    job = parse(changed(minimal(), "input", normalize={"mean": 0.5, "std": 0.25}), root)
    assert job.input.normalize == Normalize("auto", 0.5, 0.25)
    assert parse(changed(minimal(), "input", normalize="none"), root).input.normalize == Normalize("none")


def test_bare_activation_string_is_one_head(root: Path) -> None:
    job = parse(changed(minimal(), "output", activation="sigmoid"), root)
    assert job.output.activations == ("sigmoid",)


def test_heads_without_activation_default_to_none(root: Path) -> None:
    job = parse(changed(minimal(), "output", heads=[1, 3]), root)
    assert job.output.activations == ("none", "none")


def test_architecture_with_config_and_checkpoint(root: Path) -> None:
    doc = minimal()
    doc["model"] = {
        "architecture": "unet3d",
        "config": {"out_channels": 2, "filters": [8, 16]},
        "checkpoint": "c.pth",
    }
    model = parse(doc, root).model
    assert model.kind == "architecture" and model.architecture == "unet3d"
    assert model.config == (("filters", (8, 16)), ("out_channels", 2))
    assert model.config_dict() == {"filters": [8, 16], "out_channels": 2}
    assert model.checkpoint == str(root / "c.pth")
    hash(model)  # a Dask task carries it: must be hashable


def test_exported_model(root: Path) -> None:
    doc = minimal()
    doc["model"] = {"exported": "net.pt2"}
    assert parse(doc, root).model == ModelRef("exported", path=str(root / "net.pt2"))


def test_model_name_goes_through_the_registry_hook(root: Path) -> None:
    doc = minimal()
    doc["model"] = {"name": "mito-v1"}
    assert spec_error(doc, root).field == "model.name"
    registered = ModelRef("torchscript", path="/models/mito.pt", name="mito-v1")
    assert parse_inference(doc, [root], resolve_model={"mito-v1": registered}.__getitem__).model == registered
    doc["model"] = {"name": "other"}
    err = spec_error_with(doc, root, {"mito-v1": registered}.__getitem__)
    assert err.field == "model.name" and "other" in err.reason


def spec_error_with(doc: dict[str, Any], root: Path, resolver: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_inference(doc, [root], resolve_model=resolver)
    return caught.value


# --- bad documents ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("window", {"strid": [8, 64, 64]}, "window.strid"),
        ("output", {"activaton": ["none"]}, "output.activaton"),
        ("compute", {"gpus": 2}, "compute.gpus"),
        ("input", {"roi": {"offset": [0, 0, 0], "size": [1, 1, 1]}}, "input.roi.size"),
    ],
)
def test_unknown_field_is_named(root: Path, section: str, values: dict[str, Any], field: str) -> None:
    err = spec_error(changed(minimal(), section, **values), root)
    assert field in [f for f, _ in err.errors]
    assert "unknown field" in dict(err.errors)[field]


def test_unknown_top_level_field_suggests_the_right_one(root: Path) -> None:
    doc = minimal()
    doc["windwo"] = doc.pop("window")
    err = spec_error(doc, root)
    assert dict(err.errors)["windwo"] == "unknown field; did you mean 'window'?"
    assert dict(err.errors)["window"] == "required"
    assert str(err).startswith(f"{err.field}: ")


@pytest.mark.parametrize(
    ("section", "typed", "hint"),
    [
        ("output", "formt", "did you mean 'format'?"),
        ("output", "chunk", "did you mean 'chunks'?"),
        ("output", "Format", "did you mean 'format'?"),
        ("window", "pach_size", "did you mean 'patch_size'?"),
        ("window", "batchsize", "did you mean 'batch_size'?"),
        # shares letters with `heads` but is no typo of it: the known fields instead
        ("output", "hades", "expected one of: activation, chunks, dataset, dtype, format, heads, "),
    ],
)
def test_a_suggestion_is_a_typo_a_person_would_see(root: Path, section: str, typed: str, hint: str) -> None:
    err = spec_error(changed(minimal(), section, **{typed: 1}), root)
    assert dict(err.errors)[f"{section}.{typed}"].startswith(f"unknown field; {hint}")


def test_both_stride_and_overlap(root: Path) -> None:
    err = spec_error(changed(minimal(), "window", stride=[8, 64, 64], overlap=0.5), root)
    assert err.field == "window.overlap" and "not both" in err.reason


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"patch_size": [17, 129]}, "window.patch_size"),
        ({"patch_size": [0, 129, 129]}, "window.patch_size[0]"),
        ({"patch_size": [17, 129.5, 129]}, "window.patch_size[1]"),
        ({"patch_size": [17, "129", 129]}, "window.patch_size[1]"),
        ({"stride": [8, -1, 64]}, "window.stride[1]"),
        ({"stride": [8, 200, 64]}, "window.stride"),
        ({"overlap": 1.0}, "window.overlap[0]"),
        ({"overlap": -0.1}, "window.overlap[0]"),
        ({"batch_size": 0}, "window.batch_size"),
        ({"pad_size": [-1, 0, 0]}, "window.pad_size[0]"),
        ({"blending": "linear"}, "window.blending"),
        ({"pad_mode": "wrap"}, "window.pad_mode"),
        ({"tta": {"variants": 2}}, "window.tta.variants"),
        ({"tta": {"variants": True}}, "window.tta.variants"),
        ({"tta": {"reduce": "median"}}, "window.tta.reduce"),
    ],
)
def test_bad_window(root: Path, values: dict[str, Any], field: str) -> None:
    assert spec_error(changed(minimal(), "window", **values), root).field == field


@pytest.mark.parametrize("variants", [8, 16])
def test_transpose_tta_needs_square_yx_patch(root: Path, variants: int) -> None:
    doc = changed(minimal(), "window", patch_size=[17, 129, 65], tta={"variants": variants})
    err = spec_error(doc, root)
    assert err.field == "window.tta.variants"
    assert err.reason.startswith("transpose TTA needs a square yx patch, got")
    assert parse(changed(minimal(), "window", patch_size=[17, 129, 65], tta={"variants": 4}), root)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"heads": [1, 1], "activation": ["sigmoid"]}, "output.activation"),
        ({"heads": [2], "activation": ["sigmoid", "none"]}, "output.activation"),
        ({"activation": ["sigmoid", "softmax"]}, "output.activation"),
        ({"heads": [1, 1], "activation": "sigmoid"}, "output.activation"),
        ({"heads": [0]}, "output.heads[0]"),
        ({"heads": []}, "output.heads"),
        ({"activation": ["relu"]}, "output.activation[0]"),
        ({"format": "hdf5"}, "output.format"),
        ({"dtype": "int8"}, "output.dtype"),
        ({"chunks": [32, 0, 256]}, "output.chunks[1]"),
        ({"overwrite": "yes"}, "output.overwrite"),
        ({"dataset": ""}, "output.dataset"),
        ({"dataset": "/"}, "output.dataset"),
    ],
)
def test_bad_output(root: Path, values: dict[str, Any], field: str) -> None:
    assert spec_error(changed(minimal(), "output", **values), root).field == field


def test_block_shape_must_be_a_multiple_of_the_chunks(root: Path) -> None:
    doc = changed(minimal(), "output", chunks=[32, 256, 256])
    err = spec_error(changed(doc, "compute", block_shape=[64, 500, 512]), root)
    assert err.field == "compute.block_shape" and "multiple" in err.reason
    assert parse(changed(doc, "compute", block_shape=[32, 512, 768]), root).compute.block_shape == (
        32,
        512,
        768,
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"device": "tpu"}, "compute.device"),
        ({"precision": "int8"}, "compute.precision"),
        ({"memory_format": "channels_last"}, "compute.memory_format"),
    ],
)
def test_bad_compute(root: Path, values: dict[str, Any], field: str) -> None:
    assert spec_error(changed(minimal(), "compute", **values), root).field == field


@pytest.mark.parametrize(
    ("roi", "field"),
    [
        ({"offset": [-1, 0, 0], "shape": [1, 1, 1]}, "input.roi.offset[0]"),
        ({"offset": [0, 0, 0], "shape": [1, 0, 1]}, "input.roi.shape[1]"),
        ({"offset": [0, 0], "shape": [1, 1, 1]}, "input.roi.offset"),
        ({"offset": [0, 0, 0]}, "input.roi.shape"),
    ],
)
def test_bad_roi(root: Path, roi: dict[str, Any], field: str) -> None:
    assert spec_error(changed(minimal(), "input", roi=roi), root).field == field


@pytest.mark.parametrize(
    ("normalize", "field"),
    [
        ("zscore", "input.normalize.mode"),
        ({"mean": 0.5, "std": 0}, "input.normalize.std"),
        ({"mean": float("nan"), "std": 1}, "input.normalize.mean"),
        ({"mean": 0, "std": float("inf")}, "input.normalize.std"),
    ],
)
def test_bad_normalize(root: Path, normalize: Any, field: str) -> None:
    assert spec_error(changed(minimal(), "input", normalize=normalize), root).field == field


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({}, "model"),
        ({"torchscript": "a.pt", "exported": "b.pt2"}, "model"),
        ({"torchscript": "a.pt", "config": {"x": 1}}, "model.config"),
        ({"exported": "a.pt2", "checkpoint": "c.pth"}, "model.checkpoint"),
        ({"architecture": "unet3d", "config": {"nested": {"a": 1}}}, "model.config.nested"),
        ({"torchscript": "a.pt", "weights": "w"}, "model.weights"),
    ],
)
def test_bad_model(root: Path, model: dict[str, Any], field: str) -> None:
    doc = minimal()
    doc["model"] = model
    assert spec_error(doc, root).field == field


@pytest.mark.parametrize("kind", ["training", "train", None, 3])
def test_any_other_kind_is_refused_on_kind(root: Path, kind: Any) -> None:
    err = spec_error({"kind": kind, **minimal()}, root)
    assert (err.field, err.reason) == ("kind", f"expected 'inference' here, got {kind!r}")


def test_kind_may_be_left_out(root: Path) -> None:
    given, left_out = parse({"kind": "inference", **minimal()}, root), parse(minimal(), root)
    assert dataclasses.replace(given, document=left_out.document) == left_out


def test_document_must_be_a_mapping(root: Path) -> None:
    with pytest.raises(SpecError):
        parse_inference([1, 2], [root])  # type: ignore[arg-type]


# --- paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("input", "path", "../outside.zarr"),
        ("input", "path", "data/../../outside.zarr"),
        ("output", "path", "../out.zarr"),
        ("model", "torchscript", "../net.pt"),
        ("input", "dataset", "../../outside"),
        ("output", "dataset", "a/../../b"),
    ],
)
def test_dotdot_escape(root: Path, section: str, key: str, value: str) -> None:
    err = spec_error(changed(minimal(), section, **{key: value}), root)
    assert isinstance(err, PathOutsideRootsError)
    assert err.field == f"{section}.{key}" and value in err.reason


def test_checkpoint_escape(root: Path) -> None:
    doc = minimal()
    doc["model"] = {"architecture": "unet3d", "checkpoint": "/etc/ckpt.pth"}
    err = spec_error(doc, root)
    assert isinstance(err, PathOutsideRootsError) and err.field == "model.checkpoint"


def test_absolute_path_elsewhere(root: Path, tmp_path: Path) -> None:
    err = spec_error(changed(minimal(), "input", path=str(tmp_path / "elsewhere.zarr")), root)
    assert isinstance(err, PathOutsideRootsError) and err.field == "input.path"
    assert str(tmp_path / "elsewhere.zarr") in err.reason


def test_sibling_with_common_prefix_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "2")
    err = spec_error(changed(minimal(), "input", path=str(sibling / "em.zarr")), root)
    assert isinstance(err, PathOutsideRootsError)


def test_absolute_path_inside_any_root(root: Path, tmp_path: Path) -> None:
    second = tmp_path / "second"
    second.mkdir()
    job = parse_inference(changed(minimal(), "input", path=str(second / "em.zarr")), [root, second])
    assert job.input.path == str(second / "em.zarr")
    assert job.output.path == str(root / "out.zarr")  # relative: against the first root


def test_symlink_out_of_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    err = spec_error(changed(minimal(), "input", path="link/em.zarr"), root)
    assert isinstance(err, PathOutsideRootsError) and err.field == "input.path"
    assert str(outside) in err.reason


def test_symlinked_dataset_out_of_root(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (root / "em.zarr").mkdir()
    (root / "em.zarr" / "raw").symlink_to(tmp_path / "secret", target_is_directory=True)
    err = spec_error(changed(minimal(), "input", dataset="raw"), root)
    assert isinstance(err, PathOutsideRootsError) and err.field == "input.dataset"


def test_symlink_inside_root_is_followed(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    job = parse(changed(minimal(), "input", path="alias/em.zarr"), root)
    assert job.input.path == str(root / "real" / "em.zarr")


def test_root_given_through_a_symlink(root: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    job = parse_inference(minimal(), [tmp_path / "root-link"])
    assert job.input.path == str(root / "em.zarr")


@pytest.mark.parametrize(("section", "key"), [("input", "path"), ("output", "path"), ("input", "dataset")])
def test_nul_byte(root: Path, section: str, key: str) -> None:
    err = spec_error(changed(minimal(), section, **{key: "em\x00.zarr"}), root)
    assert isinstance(err, PathOutsideRootsError) and err.field == f"{section}.{key}"


def test_dataset_slashes_are_normalised(root: Path) -> None:
    job = parse(changed(minimal(), "input", dataset="/volumes/raw/"), root)
    assert job.input.dataset == "volumes/raw"


def test_output_may_not_be_a_data_root(root: Path) -> None:
    assert spec_error(changed(minimal(), "output", path="."), root).field == "output.path"


@pytest.mark.parametrize(
    ("output", "dataset"),
    [("em.zarr", "raw"), ("em.zarr", "raw/sub"), ("em.zarr/raw", "x")],
)
def test_output_may_not_overlap_the_input(root: Path, output: str, dataset: str) -> None:
    doc = changed(minimal(), "input", path="em.zarr", dataset="raw")
    err = spec_error(changed(doc, "output", path=output, dataset=dataset), root)
    assert err.field == "output.dataset" and "overlaps the input" in err.reason


def test_output_beside_the_input_in_one_container(root: Path) -> None:
    doc = changed(minimal(), "input", path="em.zarr", dataset="raw")
    job = parse(changed(doc, "output", path="em.zarr", dataset="pred"), root)
    assert job.output.path == job.input.path


def test_an_output_group_linked_into_the_input_is_the_input(root: Path) -> None:
    """``out/c.zarr/g3`` a symlink to the input's container: ``g3/raw`` *is* the input array, and with
    ``overwrite: true`` the job would replace it by a prediction of zeros."""
    (root / "em.zarr" / "raw").mkdir(parents=True)
    (root / "out" / "c.zarr").mkdir(parents=True)
    (root / "out" / "c.zarr" / "g3").symlink_to(root / "em.zarr")
    doc = changed(minimal(), "input", path="em.zarr", dataset="raw")
    doc = changed(doc, "output", path="out/c.zarr", dataset="g3/raw", overwrite=True)
    err = spec_error(doc, root)
    assert err.field == "output.dataset" and "overlaps the input" in err.reason
    assert str(root / "em.zarr" / "raw") in err.reason


def test_output_pyramid_is_on_by_default_and_false_turns_it_off(doc: dict[str, Any], root: Path) -> None:
    assert parse(doc, root).output.pyramid is True
    flat = parse(changed(doc, "output", pyramid=False), root)
    assert flat.output.pyramid is False and flat.layout_key("m") != parse(doc, root).layout_key("m")
    error = spec_error(changed(doc, "output", pyramid="sometimes"), root)
    assert error.field == "output.pyramid"
