"""``input.mask`` through ``pytc run``: the embedded Dask cluster, a real TorchScript model, the
service's admission checks (exit 2 naming ``input.mask``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from service.cli import main
from tests.integration.test_pytc_run import PATCH, STRIDE, job_doc, read_output, root  # noqa: F401
from tests.unit.workers.inference.test_mask import reference
from volumes.box import Box
from workers.inference.job import WindowSpec
from workers.inference.predictor import WindowPredictor


def add_mask(folder: Path, mask: np.ndarray, resolution: list[float] | None) -> None:
    group = zarr.open_group(folder / "em.zarr", mode="a")
    array = group.create_array("mask", data=mask, chunks=mask.shape, overwrite=True)
    if resolution is not None:
        array.attrs["resolution"] = resolution
        group["raw"].attrs["resolution"] = [1.0, 1.0, 1.0]


def test_a_masked_run_on_dask_equals_the_kept_windows_alone(root: Path) -> None:  # noqa: F811
    coarse = np.zeros((7, 10, 11), np.uint8)  # 2x4x4 coarser than the 14x40x44 input
    coarse[1:3, 2:4, 2:3] = 1
    add_mask(root, coarse, [2.0, 4.0, 4.0])
    doc = job_doc(**{"input.mask": {"path": "em.zarr", "dataset": "mask"}})
    (root / "job.yaml").write_text(yaml.safe_dump(doc))
    report = root / "report.json"
    args = ["run", str(root / "job.yaml"), "--data-root", str(root), "--quiet", "--report", str(report)]
    assert main(args) == 0
    data = zarr.open_array(root / "em.zarr" / "raw")[:].astype(np.float32) / 255
    predictor = WindowPredictor(
        torch.jit.load(str(root / "net.pt")), torch.device("cpu"), (2,), ("sigmoid",), 1
    )  # type: ignore[arg-type]
    full = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 4, 1), 4, 2)
    window = WindowSpec(PATCH, STRIDE, "gaussian")
    expected, kept, total = reference(data, full, Box.of_shape(data.shape), window, predictor.predict, 2)
    np.testing.assert_allclose(read_output(root / "out.zarr"), expected, rtol=1e-5, atol=1e-6)
    figures = json.loads(report.read_text())
    assert figures["windows"] == kept and figures["windows_masked"] == total - kept > 0, figures
    assert figures["blocks_masked"] > 0 and figures["tasks_run"]["pass1"] < figures["blocks_total"], figures


@pytest.mark.parametrize(
    ("mask", "resolution", "words"),
    [
        (np.ones((14, 40, 44), np.float32), None, "bool or integer"),
        (np.ones((7, 10, 11), np.uint8), [2.0, 3.0, 4.0], "does not cover"),
        (np.ones((7, 10, 11), np.uint8), [2.0, 4.0, 4.5], "not an integer multiple"),
    ],
)
def test_a_bad_mask_exits_2_naming_input_mask(root, capsys, mask, resolution, words):  # type: ignore[no-untyped-def]  # noqa: F811
    add_mask(root, mask, resolution)
    (root / "job.yaml").write_text(
        yaml.safe_dump(job_doc(**{"input.mask": {"path": "em.zarr", "dataset": "mask"}}))
    )
    assert main(["run", str(root / "job.yaml"), "--data-root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: input.mask" in err and words in err, err
    assert not (root / "out.zarr").exists()
