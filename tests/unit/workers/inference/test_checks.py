"""Checks against real (small) zarr stores: input, model channels, an existing output."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from models.ref import ModelInfo
from service.documents.inference import parse_inference
from volumes.output import create_output
from workers.errors import OutputExistsError, SpecError
from workers.inference.checks import check_input, check_model, open_input, output_state, roi_shape
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob

SHA = "0" * 64


def validate_against_data(job: InferenceJob) -> None:
    check_input(job, open_input(job))


def validate_against_model(job: InferenceJob, info: ModelInfo) -> None:
    check_model(job, info, open_input(job))


def check_output(job: InferenceJob, sha256: str) -> str:
    return output_state(job, sha256, roi_shape(job, open_input(job)))


def make_array(path: Path, shape: tuple[int, ...], dataset: str | None = "raw", dtype: str = "uint8") -> None:
    if dataset is None:
        array = zarr.create_array(str(path), shape=shape, dtype=dtype, chunks=shape)
    else:
        group = zarr.open_group(str(path), mode="a")
        array = group.create_array(dataset, shape=shape, dtype=dtype, chunks=shape)
    array[...] = 7


def job_for(root: Path, **sections: dict[str, Any]) -> InferenceJob:
    doc: dict[str, Any] = {
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [5, 9, 9]},
        "output": {"path": "out.zarr", "chunks": [4, 8, 8]},
    }
    for name, values in sections.items():
        doc[name] = {**doc[name], **values}
    return parse_inference(doc, [root])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_array(tmp_path / "em.zarr", (8, 16, 16))
    make_array(tmp_path / "em.zarr", (2, 8, 16, 16), dataset="two_channels")
    return tmp_path


# --- the input ---------------------------------------------------------------------------------------


def test_a_good_input_passes(root: Path) -> None:
    validate_against_data(job_for(root))
    validate_against_data(job_for(root, input={"roi": {"offset": [2, 0, 8], "shape": [6, 16, 8]}}))
    validate_against_data(job_for(root, input={"dataset": "two_channels"}))


def test_missing_input_path(root: Path) -> None:
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"path": "nope.zarr"}))
    assert caught.value.field == "input.path" and "does not exist" in caught.value.reason


def test_missing_dataset_lists_the_existing_ones(root: Path) -> None:
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"dataset": "mito"}))
    assert caught.value.field == "input.dataset"
    assert "raw" in caught.value.reason and "two_channels" in caught.value.reason


def test_container_without_dataset(root: Path) -> None:
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"dataset": None}))
    assert caught.value.field == "input.dataset" and "raw" in caught.value.reason


def test_not_a_volume(root: Path) -> None:
    (root / "plain").mkdir()
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"path": "plain", "dataset": None}))
    assert caught.value.field == "input.path"


@pytest.mark.parametrize("shape", [(16, 16), (1, 2, 8, 16, 16)])
def test_input_must_be_3d_or_4d(root: Path, shape: tuple[int, ...]) -> None:
    make_array(root / "odd.zarr", shape, dataset=None)
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"path": "odd.zarr", "dataset": None}))
    assert caught.value.field == "input.path" and "3D" in caught.value.reason


@pytest.mark.parametrize(
    "roi",
    [
        {"offset": [0, 0, 0], "shape": [9, 16, 16]},
        {"offset": [4, 0, 0], "shape": [5, 1, 1]},
        {"offset": [0, 16, 0], "shape": [1, 1, 1]},
        {"offset": [0, 0, 10], "shape": [1, 1, 7]},
    ],
)
def test_roi_outside_the_volume(root: Path, roi: dict[str, list[int]]) -> None:
    with pytest.raises(SpecError) as caught:
        validate_against_data(job_for(root, input={"roi": roi}))
    assert caught.value.field == "input.roi"
    assert "outside the volume of shape [8, 16, 16]" in caught.value.reason


def test_roi_of_a_4d_input_is_spatial(root: Path) -> None:
    roi = {"offset": [0, 0, 0], "shape": [8, 16, 16]}
    validate_against_data(job_for(root, input={"dataset": "two_channels", "roi": roi}))


# --- the model ---------------------------------------------------------------------------------------


def test_heads_must_add_up_to_the_model_outputs(root: Path) -> None:
    job = job_for(root, output={"heads": [1, 2], "activation": ["sigmoid", "softmax"]})
    validate_against_model(job, ModelInfo(1, 3, SHA))
    with pytest.raises(SpecError) as caught:
        validate_against_model(job, ModelInfo(1, 2, SHA))
    assert caught.value.field == "output.heads" and "2" in caught.value.reason


def test_one_head_takes_all_channels(root: Path) -> None:
    validate_against_model(job_for(root), ModelInfo(1, 5, SHA))


@pytest.mark.parametrize(("dataset", "model_in"), [("raw", 2), ("two_channels", 1)])
def test_input_channels_must_match_the_model(root: Path, dataset: str, model_in: int) -> None:
    with pytest.raises(SpecError) as caught:
        validate_against_model(job_for(root, input={"dataset": dataset}), ModelInfo(model_in, 1, SHA))
    assert caught.value.field == "model" and "input channel" in caught.value.reason


def test_two_channel_input(root: Path) -> None:
    validate_against_model(job_for(root, input={"dataset": "two_channels"}), ModelInfo(2, 1, SHA))


def test_softmax_on_one_channel_warns(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = job_for(root, output={"heads": [1, 1], "activation": ["softmax", "sigmoid"]})
    with caplog.at_level(logging.WARNING, logger="workers.inference.checks"):
        validate_against_model(job, ModelInfo(1, 2, SHA))
    assert "softmax" in caplog.text and "output.activation[0]" in caplog.text


# --- an existing output ------------------------------------------------------------------------------


def write_output(
    job: InferenceJob, layout_key: str | None, spatial: tuple[int, int, int] = (8, 16, 16)
) -> None:
    """An output image (level 0 at ``<dataset>/0``) of this layout key."""
    attrs = {OUTPUT_ATTRS_KEY: {"layout_key": layout_key, "complete": False}} if layout_key else {}
    create_output(
        job.output.path, job.output.dataset, "zarr3", (1, *spatial), "float32", (4, 8, 8), attrs=attrs
    )
    zarr.open_array(f"{job.output.path}/{job.output.dataset}/0", mode="r+")[...] = 0.25


def output_values(job: InferenceJob) -> np.ndarray:
    return np.asarray(zarr.open_array(f"{job.output.path}/{job.output.dataset}/0", mode="r")[...])


def test_an_output_of_the_old_layout_is_not_resumed(root: Path) -> None:
    """An array where the image should be (written before outputs had levels) is never resumed into:
    its job's key is the same, but its layout is not."""
    job = job_for(root)
    group = zarr.open_group(job.output.path, mode="a")
    array = group.create_array(job.output.dataset, shape=(1, 8, 16, 16), dtype="float32", chunks=(1, 4, 8, 8))
    array.attrs[OUTPUT_ATTRS_KEY] = {"layout_key": job.layout_key(SHA), "complete": False}
    with pytest.raises(OutputExistsError):
        check_output(job, SHA)
    assert check_output(job_for(root, output={"overwrite": True}), SHA) == "absent"


def test_absent_output(root: Path) -> None:
    assert check_output(job_for(root), SHA) == "absent"


def test_container_without_the_output_dataset_is_absent(root: Path) -> None:
    job = job_for(root)
    zarr.open_group(job.output.path, mode="a").create_array("other", shape=(2,), dtype="uint8")
    assert check_output(job, SHA) == "absent"


def test_output_of_the_same_job_resumes(root: Path) -> None:
    job = job_for(root)
    write_output(job, job.layout_key(SHA))
    assert check_output(job, SHA) == "resume"
    overwriting = job_for(root, output={"overwrite": True})
    assert overwriting.layout_key(SHA) == job.layout_key(SHA)
    assert check_output(overwriting, SHA) == "resume"


@pytest.mark.parametrize("layout_key", [None, "another-job"])
def test_foreign_output_without_overwrite(root: Path, layout_key: str | None) -> None:
    job = job_for(root)
    write_output(job, layout_key)
    with pytest.raises(OutputExistsError) as caught:
        check_output(job, SHA)
    assert caught.value.field == "output.path" and "overwrite: true" in caught.value.reason
    assert isinstance(caught.value, FileExistsError)
    assert np.all(output_values(job) == 0.25)  # untouched


def test_other_model_is_another_job(root: Path) -> None:
    job = job_for(root)
    write_output(job, job.layout_key(SHA))
    with pytest.raises(OutputExistsError):
        check_output(job, "1" * 64)


def test_foreign_output_with_overwrite_counts_as_absent(root: Path) -> None:
    job = job_for(root, output={"overwrite": True})
    write_output(job, "another-job")
    assert check_output(job, SHA) == "absent"
    assert np.all(output_values(job) == 0.25)  # the runner replaces it, not the check


def test_same_key_but_other_shape_is_not_resumed(root: Path) -> None:
    job = job_for(root)
    write_output(job, job.layout_key(SHA), spatial=(8, 16, 8))
    with pytest.raises(OutputExistsError):
        check_output(job, SHA)


def test_output_path_that_is_not_a_volume(root: Path) -> None:
    job = job_for(root)
    Path(job.output.path).mkdir()
    (Path(job.output.path) / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        check_output(job, SHA)
    assert (Path(job.output.path) / "notes.txt").read_text() == "mine"
