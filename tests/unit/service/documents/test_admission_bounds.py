"""Sizes a document asks for are bounded while it is parsed, before anything is allocated: each
refusal is a SpecError naming the field (``pytc run`` exits 2, the service answers 422)."""

from __future__ import annotations

import copy
import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from service.errors import SpecError
from service.kinds import parse_job
from service.kinds.base import AdmitEnv, ParseEnv
from service.settings import LimitSettings, Settings
from tests.training_helpers import training_doc, write_data
from workers.limits import GIB, Limits, limits_from_env

DOC: dict[str, Any] = {
    "kind": "inference",
    "input": {"path": "em.zarr", "dataset": "raw"},
    "model": {"torchscript": "net.pt"},
    "window": {"patch_size": [17, 129, 129], "stride": [8, 64, 64], "batch_size": 4},
    "output": {"path": "out.zarr", "dataset": "pred", "chunks": [32, 256, 256]},
}


def doc_with(section: str, key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc[section][key] = value
    return doc


def refused(doc: dict[str, Any], root: Path, limits: Limits = Limits()) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(doc, ParseEnv((root,), limits=limits))
    return caught.value


def test_the_contract_sizes_pass(tmp_path: Path) -> None:
    parse_job(DOC, ParseEnv((tmp_path,)))
    parse_job(doc_with("window", "pad_size", [8, 64, 64]), ParseEnv((tmp_path,)))


@pytest.mark.parametrize("pad", [10**11, 1e11])
def test_a_huge_pad_is_refused_at_once_with_nothing_allocated(tmp_path: Path, pad: Any) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = refused(doc_with("window", "pad_size", [pad, 0, 0]), tmp_path)
    assert error.field.startswith("window.pad_size")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 10_000  # KiB


def test_a_patch_of_128x1024x1024_is_refused_naming_the_patch(tmp_path: Path) -> None:
    doc = doc_with("window", "patch_size", [128, 1024, 1024])
    doc["window"]["stride"] = [64, 512, 512]
    error = refused(doc, tmp_path)
    assert error.field == "window.patch_size" and "GiB" in error.reason


def test_blocks_batches_and_chunks_are_refused_naming_their_field(tmp_path: Path) -> None:
    block = refused({**DOC, "compute": {"block_shape": [1024, 4096, 4096]}}, tmp_path)
    assert block.field == "compute.block_shape"
    batch = refused(doc_with("window", "batch_size", 100_000), tmp_path)
    assert batch.field == "window.batch_size" and "a batch of" in batch.reason
    chunks = refused(doc_with("output", "chunks", [1024, 1024, 1024]), tmp_path)
    assert chunks.field == "output.chunks"


def test_the_bounds_follow_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORKER_MEMORY_BYTES", "MAX_INPUT_VOXELS", "MAX_MODEL_PARAMETERS"):
        monkeypatch.delenv(f"PYTC_{name}", raising=False)
    doc = doc_with("window", "patch_size", [64, 512, 512])
    doc["window"]["stride"] = [32, 256, 256]
    small = LimitSettings().limits()
    assert small.worker_memory_bytes == 32 * GIB and small.max_input_voxels == 10**16
    assert refused(doc, tmp_path, small).field == "window.batch_size"
    monkeypatch.setenv("PYTC_WORKER_MEMORY_BYTES", str(256 * GIB))
    monkeypatch.setenv("PYTC_MAX_MODEL_PARAMETERS", "1000")
    assert Settings().limits() == LimitSettings().limits() == limits_from_env(os.environ)  # serve, run
    parse_job(doc, ParseEnv((tmp_path,), limits=LimitSettings().limits()))
    unet = {"kind": "inference", **{k: v for k, v in DOC.items() if k != "model"}}
    unet["model"] = {"architecture": "unet3d", "config": {}}
    assert refused(unet, tmp_path, LimitSettings().limits()).field == "model.config"


@pytest.mark.parametrize(
    "config",
    [{"in_channels": 10**12}, {"out_channels": 10**12}, {"filters": [768] * 5}],
    ids=["in_channels", "out_channels", "filters"],
)
def test_a_network_too_large_to_build_is_refused_before_any_worker_builds_it(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    doc = copy.deepcopy(DOC)
    doc["model"] = {"architecture": "unet3d", "config": config}
    error = refused(doc, tmp_path)
    assert error.field == "model.config" and "parameters" in error.reason


def test_a_float_channel_count_is_refused_as_a_wrong_type(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    doc["model"] = {"architecture": "unet3d", "config": {"in_channels": 1e12}}
    parse_job(doc, ParseEnv((tmp_path,)))  # the size is unknown here: the builder names the type


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("input", "path", "a" * 5000, "input.path"),
        ("input", "path", "/".join(["d"] * 2100), "input.path"),
        ("output", "path", "x" * 300 + ".zarr", "output.path"),
        ("output", "dataset", "p" * 256, "output.dataset"),
        ("input", "dataset", "g/" * 2100 + "raw", "input.dataset"),
    ],
    ids=["path-5000", "path-4200-in-parts", "name-304", "dataset-256", "dataset-4203"],
)
def test_paths_and_names_longer_than_the_file_system_takes_are_refused(
    tmp_path: Path, section: str, key: str, value: str, field: str
) -> None:
    error = refused(doc_with(section, key, value), tmp_path)
    assert error.field == field and "bytes long" in error.reason and "at most" in error.reason
    assert len(error.reason) < 300  # the value is shown shortened


def test_a_model_name_longer_than_255_is_refused(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    doc["model"] = {"name": "m" * 256}
    with pytest.raises(SpecError) as caught:
        parse_job(doc, ParseEnv((tmp_path,), resolve_model=lambda name: pytest.fail("looked up")))
    assert caught.value.field == "model.name"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sampling.patch_size": [128, 1024, 1024]}, "sampling.patch_size"),
        ({"sampling.patch_size": [33, 257, 257], "solver.batch_size": 1000}, "solver.batch_size"),
        ({"model.config": {"filters": [768] * 5}}, "model.config"),
        ({"model.config": {"in_channels": 10**12}}, "model.config"),
        ({"data.image.path": "x" * 300}, "data.image.path"),
        ({"checkpoint.dir": "runs/" + "r" * 256}, "checkpoint.dir"),
    ],
    ids=["patch", "batch", "filters", "in_channels", "image-name", "checkpoint-name"],
)
def test_training_sizes_are_bounded_naming_the_field(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    parse_job(training_doc(), ParseEnv((tmp_path,)))
    assert refused(training_doc(**changes), tmp_path).field == field


def test_a_training_image_claiming_10_to_the_12_per_axis_is_refused_before_any_worker(tmp_path: Path) -> None:
    write_data(tmp_path)
    meta_file = tmp_path / "em.zarr" / "raw" / "0" / "zarr.json"  # the image raw, its level 0
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "shape": [10**12] * 3}))
    kind, job = parse_job(training_doc(), ParseEnv((tmp_path,)))
    with pytest.raises(SpecError) as caught:
        kind.admit(job, AdmitEnv(lambda fn, *args: pytest.fail("a worker was asked"), Limits()))
    assert caught.value.field == "data.image" and "PYTC_MAX_INPUT_VOXELS" in caught.value.reason
    assert "[1000000000000, 1000000000000, 1000000000000]" in caught.value.reason
