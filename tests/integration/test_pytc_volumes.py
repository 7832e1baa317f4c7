"""PyTC configs naming several volumes (``IMAGE_NAME: a@b``), TIFF and PNG stacks, run through ``pytc
run --pytc-config`` against PyTorch Connectomics v1's own ``Trainer.test`` output.

The golden image and weights are those of ``test_pytc_config_run.py`` (``tests/data/pytc_golden``,
made with upstream PyTC, ``make_golden.py``). PyTC reads a ``.tif`` with ``imageio.volread`` and a
``.png`` pattern as its sorted files stacked, the same array as the HDF5 file holds, so each
volume's output must be PyTC's, bit for bit, in the dataset PyTC's ``writeh5`` gives it (``vol0``,
``vol1``, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from service.cli import main
from tests.integration.test_pytc_config_run import CASES, GOLDEN, _root
from volumes.box import Box
from volumes.open import open_volume

CONFIG = str(GOLDEN / f"{CASES[0]}.yaml")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden.npz") as stored:
        return {key: stored[key] for key in stored.files}


def _flags(root: Path) -> list[str]:
    return ["--inference", "--checkpoint", "checkpoint_00001.pth.tar", "--data-root", str(root)]


def _damaged_tiff(path: Path, image: np.ndarray) -> None:
    """A TIFF whose header and layout read, and whose last tile does not decompress (seen only by a run)."""
    tifffile.imwrite(path, image, photometric="minisblack", compression="zlib", tile=(16, 16))
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[-1].dataoffsets[-1], tif.pages[-1].databytecounts[-1]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_several_volumes_run_in_turn_each_as_pytc_writes_it(
    tmp_path: Path, golden: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path, golden, CASES[0])
    tifffile.imwrite(root / "data" / "im.tif", golden["image"], photometric="minisblack", tile=(16, 16))
    for z, section in enumerate(golden["image"]):  # a PNG stack: PyTC's readvol of "s_*.png"
        Image.fromarray(section).save(root / "data" / f"s_{z:03d}.png")
    names = ["INFERENCE.IMAGE_NAME", "im.tif@s_*.png"]
    assert main(["run", "--pytc-config", CONFIG, *names, *_flags(root), "--quiet"]) == 0
    for dataset in ("vol0", "vol1"):  # PyTC's one output file, a dataset per volume
        written = open_volume(root / "out" / "result.zarr", dataset)
        np.testing.assert_array_equal(written.read(Box.of_shape(written.shape)), golden[f"{CASES[0]}/output"])
    capsys.readouterr()
    assert main(["run", "--pytc-config", CONFIG, *names, *_flags(root)]) == 0  # resumes: nothing to do
    done = [line for line in capsys.readouterr().err.splitlines() if line.startswith("succeeded:")]
    assert len(done) == 2 and all("already done" in line and "(0 already" not in line for line in done)

    # One volume that fails while running does not stop the others; the run exits nonzero.
    _damaged_tiff(root / "data" / "bad.tif", golden["image"])
    names = ["INFERENCE.IMAGE_NAME", "bad.tif@im.tif", "INFERENCE.OUTPUT_NAME", "again.h5"]
    assert main(["run", "--pytc-config", CONFIG, *names, *_flags(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 volumes failed" in err and "bad.tif" in err
    written = open_volume(root / "out" / "again.zarr", "vol1")
    np.testing.assert_array_equal(written.read(Box.of_shape(written.shape)), golden[f"{CASES[0]}/output"])


def test_a_missing_volume_is_refused_before_any_runs(
    tmp_path: Path, golden: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path, golden, CASES[0])
    names = ["INFERENCE.IMAGE_NAME", "im.h5@missing.tif"]
    assert main(["run", "--pytc-config", CONFIG, *names, *_flags(root), "--quiet"]) == 2
    assert "missing.tif" in capsys.readouterr().err
    assert not (root / "out").exists()  # the first volume was not predicted either


def test_convert_writes_one_job_per_volume(
    tmp_path: Path, golden: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    """PyTC's DO_SINGLY: one output file per volume, named from its IMAGE_NAME, in
    range(DO_SINGLY_START_INDEX, n, |DO_SINGLY_STEP|) order (backwards for a negative step)."""
    root = _root(tmp_path, golden, CASES[0])
    singly = ["INFERENCE.IMAGE_NAME", "a.tif@b.h5@c.tif", "INFERENCE.DO_SINGLY", "True"]
    out = tmp_path / "job.yaml"
    assert (
        main(["convert", CONFIG, *singly, "INFERENCE.DO_SINGLY_STEP", "-1", "-o", str(out), *_flags(root)])
        == 0
    )
    written = [tmp_path / f"job-{i}.yaml" for i in range(3)]
    assert capsys.readouterr().out.split() == [str(p) for p in written] and not out.exists()
    docs = [yaml.safe_load(p.read_text()) for p in written]
    assert [(d["input"]["path"], d["output"]["path"], d["output"]["dataset"]) for d in docs] == [
        ("data/c.tif", "out/c.zarr", "vol0"),
        ("data/b.h5", "out/b.zarr", "vol0"),
        ("data/a.tif", "out/a.zarr", "vol0"),
    ]
    assert main(["convert", CONFIG, "INFERENCE.IMAGE_NAME", "a.tif@b.tif", *_flags(root)]) == 0
    stream = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(d["output"]["path"], d["output"]["dataset"]) for d in stream] == [
        ("out/result.zarr", "vol0"),
        ("out/result.zarr", "vol1"),
    ]
