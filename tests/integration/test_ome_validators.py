"""Our OME-Zarr as the ecosystem reads it: ``ome-zarr-models`` validates every image and ome-zarr-py's
``Reader`` (as napari uses it) opens it, for zarr v2 (0.4) and v3 (0.5); tensorstore opens every
level at its shape.

The validators pin an older pydantic than ours, so they live in a virtual environment of their own,
made once under the pytest cache (``ome-validators``): its own ome-zarr-models, ome-zarr and
pydantic first on its path, then this environment's packages (a ``.pth`` file), so installing it
changes nothing here. It runs ``tests/integration/ome/validate.py`` on the images named.

The scene is what a lab does: ``pytc synth`` data (raw, mito, cells), a prediction over an ROI
written into that same container beside them, a second prediction there too, and a segmentation of
the ROI's prediction (a label image with its pyramid, placed where the prediction lies).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

from models.ref import ModelInfo
from tests.helpers import make_job
from volumes.box import Box
from volumes.labels.decoders import Decoder
from volumes.pyramid import level_shape, pyramid_factors
from volumes.synth import generate_em_volume, write_synth
from workers.inference.job import WindowSpec
from workers.inference.run import run_serially
from workers.segmentation.job import SegInput, SegmentationJob, SegOutput
from workers.segmentation.run import run_serially as segment_serially

pytestmark = pytest.mark.slow

VALIDATE = Path(__file__).with_name("ome") / "validate.py"
PACKAGES = ("ome-zarr-models>=1.0", "ome-zarr>=0.11")
ROI = Box((4, 16, 8), (8, 32, 32))


@pytest.fixture(scope="session")
def ome_python(pytestconfig: pytest.Config) -> Path:
    """The validators' interpreter, its environment made once (about a minute) and kept."""
    cache = getattr(pytestconfig, "cache", None)
    base = (
        cache.mkdir("ome-validators")
        if cache is not None
        else Path(tempfile.gettempdir()) / "pytc-ome-validators"
    )
    venv = Path(base) / f"py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import ome_zarr_models, ome_zarr.reader"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    shutil.rmtree(venv, ignore_errors=True)  # absent, or left half made
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = Path(subprocess.check_output([str(python), "-c", where], text=True).strip())
    (own / "zz_pytc_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES], check=True
    )
    subprocess.run(probe, check=True)
    return python


def validate(python: Path, *images: Path) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [str(python), str(VALIDATE), *map(str, images)], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {Path(a["path"]).name: a for a in answers}


def two_channels(batch: np.ndarray) -> np.ndarray:
    return np.concatenate([batch, 1.0 - batch], axis=1)


@pytest.fixture(params=["zarr2", "zarr3"])
def scene(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str, dict[str, Any]]:
    """synth's em.zarr with ``pred`` (an ROI), ``pred2`` (the whole volume) and ``seg`` (labels of
    ``pred``) written into it."""
    fmt = request.param
    em = tmp_path / "em.zarr"
    write_synth(em, generate_em_volume((16, 48, 48), seed=0), chunks=(8, 16, 16), format=fmt)
    root_before = sorted(p.name for p in em.iterdir())
    meta = em / ("zarr.json" if fmt == "zarr3" else ".zattrs")
    before = meta.read_text()
    window = WindowSpec((5, 9, 9), (4, 8, 8), "gaussian", batch_size=4)
    job = make_job(em, em, window, roi=ROI, chunks=(8, 16, 16), fmt=fmt)
    run_serially(job, ModelInfo(1, 2, "sha"), predict=two_channels)
    whole = replace(job, input=replace(job.input, roi=None), output=replace(job.output, dataset="pred2"))
    run_serially(whole, ModelInfo(1, 2, "sha"), predict=two_channels)
    output = SegOutput(str(em), "seg", fmt, (8, 16, 16))  # type: ignore[arg-type]
    segment_serially(SegmentationJob(SegInput(str(em), "pred"), Decoder("binary_connected", (0.5,)), output))
    assert meta.read_text() == before  # the container's own attributes, byte for byte
    made = ["pred", "pred2", "seg", "seg.objects.csv", ".pytc-run"]
    assert sorted(p.name for p in em.iterdir()) == sorted([*root_before, *made])
    return em, fmt, {"pred": (2, *ROI.shape), "pred2": (2, 16, 48, 48), "seg": ROI.shape}


def test_validators_accept_every_image_and_the_reader_sees_each(ome_python: Path, scene: Any) -> None:
    em, fmt, shapes = scene
    found = validate(ome_python, *(em / name for name in ("raw", "mito", "cells", "pred", "pred2", "seg")))
    version = "v05" if fmt == "zarr3" else "v04"
    assert sorted(found) == ["cells", "mito", "pred", "pred2", "raw", "seg"]
    for name, answer in found.items():
        model = "image_label.ImageLabel" if name == "seg" else "image.Image"
        assert answer.get("model") == f"ome_zarr_models.{version}.{model}", answer
        assert "reader_error" not in answer and answer["reader_shapes"], answer
    assert found["raw"]["reader_shapes"] == [[16, 48, 48]]
    for name, shape in shapes.items():
        levels = found[name]["reader_shapes"]
        assert levels[0] == list(shape) and len(levels) > 1, (name, levels)
        assert levels[-1][-3:] <= [8, 16, 16], levels  # down to one chunk
    seg_level0 = found["seg"]["reader_transforms"][0]  # the labels lie where the prediction lies
    assert seg_level0[0]["scale"] == [30.0, 8.0, 8.0]
    assert seg_level0[1]["translation"] == [4 * 30.0, 16 * 8.0, 8 * 8.0]
    roi_level0 = found["pred"]["reader_transforms"][0]
    assert roi_level0[0]["scale"] == [1.0, 30.0, 8.0, 8.0]
    assert roi_level0[1]["translation"] == [0.0, 4 * 30.0, 16 * 8.0, 8 * 8.0]  # where the ROI lies


def test_tensorstore_opens_every_level_at_its_shape(scene: Any) -> None:
    em, fmt, shapes = scene
    driver = "zarr3" if fmt == "zarr3" else "zarr"
    for name, shape in shapes.items():
        levels = pyramid_factors(shape[-3:], (8, 16, 16), (30.0, 8.0, 8.0))
        assert len(levels) >= 2 and not (em / name / str(len(levels))).exists()
        for index, factors in enumerate(levels):
            spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(em / name / str(index))}}
            store = ts.open(spec, read=True).result()
            assert tuple(store.shape) == level_shape(shape, factors), (name, index, store.shape)
