"""``pytc evaluate``: the figures of real stores (zarr v3, zarr v2, HDF5), block by block, equal to the
in-memory reference whatever the blocks; every bad flag is exit 2 naming the flag; help."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from service.cli import main
from volumes.metrics import reference as ref

SHAPE = (12, 40, 36)


def labels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ground truth of boxes on background, and a prediction that splits, merges and shifts them."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, np.uint32)
    for k in range(1, 15):
        lo = [int(rng.integers(0, s - 4)) for s in SHAPE]
        gt[tuple(slice(a, a + int(rng.integers(3, 12))) for a in lo)] = k
    pred = np.roll(gt.astype(np.uint64) * 7, 1, axis=2)
    pred[:, :, 20:] = np.where(pred[:, :, 20:] > 0, pred[:, :, 20:] + 1, 0)  # split along x = 20
    pred[pred == 7 * 3] = 7 * 4  # a merge
    return gt, pred


def write_stores(root: Path, gt: np.ndarray, pred: np.ndarray) -> None:
    seg = zarr.create_group(root / "seg.zarr", zarr_format=3)
    seg.create_array("mito_seg", shape=pred.shape, chunks=(5, 16, 16), dtype=pred.dtype)[...] = pred
    truth = zarr.create_group(root / "gt.zarr", zarr_format=2)
    truth.create_array("mito", shape=gt.shape, chunks=(4, 20, 9), dtype=gt.dtype)[...] = gt
    with h5py.File(root / "gt.h5", "w") as f:
        f.create_dataset("mito", data=gt, chunks=(6, 20, 18))


def evaluate(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["evaluate", *flags, "--data-root", str(root), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def scores_of(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, Any]:
    code, out, err = evaluate(capsys, root, *flags, "--json")
    assert code == 0, err
    scores: dict[str, Any] = json.loads(out)["scores"]
    return scores


def test_figures_of_stores_equal_the_in_memory_reference(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gt, pred = labels(0)
    write_stores(tmp_path, gt, pred)
    seg = ["seg.zarr", "--dataset", "mito_seg"]
    scores = scores_of(capsys, tmp_path, *seg, "--gt", "gt.zarr", "--gt-dataset", "mito")
    error, precision, recall = ref.adapted_rand_error(gt, pred)
    split, merge = ref.variation_of_information(gt, pred)
    aps = ref.instance_ap(gt, pred)
    expected = {
        "adapted_rand_error": error,
        "adapted_rand_precision": precision,
        "adapted_rand_recall": recall,
        "voi_split": split,
        "voi_merge": merge,
        "foreground_iou": ref.foreground_iou(gt, pred),
        "ap_50": aps["ap_50"],
        "ap_75": aps["ap_75"],
    }
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert scores["ap_50"] > 0 and scores["voxels"] == gt.size and scores["gt_objects"] == 14
    for block in (["--block-shape", "5", "7", "11"], ["--block-shape", "12", "40", "36"]):
        for gt_flags in (
            ["--gt", "gt.zarr", "--gt-dataset", "mito"],
            ["--gt", "gt.h5", "--gt-dataset", "mito"],
        ):
            again = scores_of(capsys, tmp_path, *seg, *gt_flags, *block, "--blocks-per-task", "3")
            assert again == pytest.approx(scores, rel=1e-12), (block, gt_flags)


def test_a_region(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gt, pred = labels(3)
    write_stores(tmp_path, gt, pred)
    flags = ["seg.zarr", "--dataset", "mito_seg", "--gt", "gt.h5", "--gt-dataset", "mito", "--metrics", "voi"]
    scores = scores_of(
        capsys, tmp_path, *flags, "--roi", "2", "5", "7", "9", "30", "20", "--block-shape", "4", "7", "9"
    )
    crop = (slice(2, 11), slice(5, 35), slice(7, 27))
    split, merge = ref.variation_of_information(gt[crop], pred[crop])
    assert scores["voxels"] == 9 * 30 * 20
    assert scores["voi_split"] == pytest.approx(split, rel=1e-9) and scores["voi_merge"] == pytest.approx(
        merge, rel=1e-9
    )


def test_the_table_and_a_choice_of_metrics(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gt, pred = labels(1)
    write_stores(tmp_path, gt, pred)
    code, out, err = evaluate(
        capsys, tmp_path, "seg.zarr", "--dataset", "mito_seg", "--gt", "gt.h5", "--gt-dataset", "mito",
        "--metrics", "voi,iou",
    )  # fmt: skip
    assert code == 0, err
    assert "VOI split" in out and "foreground IoU" in out and "AP-75" not in out and "Rand" not in out
    assert out.startswith(f"evaluated {gt.size:,} voxels")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--gt", "/etc/gt.zarr"],
            "error: --gt: path '/etc/gt.zarr' resolves to /etc/gt.zarr, outside the data roots",
        ),
        (["--gt", "gt.zarr", "--gt-dataset", "nope"], "error: --gt-dataset: no dataset 'nope' in"),
        (["--gt", "missing.zarr", "--gt-dataset", "mito"], "error: --gt: no volume at"),
        (["--gt", "gt.zarr", "--gt-dataset", "probs"], "error: --gt-dataset: ground truth"),
        (["--gt", "gt.zarr", "--gt-dataset", "small"], "error: --gt: "),
        (["--gt", "gt.zarr", "--gt-dataset", "mito", "--metrics", "rand"], "error: --metrics: expected"),
        (
            ["--gt", "gt.zarr", "--gt-dataset", "mito", "--roi", "0", "0", "30", "12", "40", "7"],
            "error: --roi: the region",
        ),
    ],
)
def test_bad_flags_are_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], message: str
) -> None:
    gt, pred = labels(2)
    write_stores(tmp_path, gt, pred)
    truth = zarr.open_group(tmp_path / "gt.zarr", mode="a")
    truth.create_array("probs", shape=SHAPE, chunks=SHAPE, dtype="float32")
    truth.create_array("small", shape=(12, 40, 35), chunks=SHAPE, dtype="uint8")
    code, out, err = evaluate(capsys, tmp_path, "seg.zarr", "--dataset", "mito_seg", *flags)
    assert code == 2 and out == "" and message in err, err
    if "probs" in flags:
        assert "float32 values, not labels" in err
    if "small" in flags:
        assert "(12, 40, 35)" in err and "(12, 40, 36)" in err


def test_help_lists_the_metrics_and_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "    evaluate " in capsys.readouterr().out
    assert main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("adapted_rand", "voi", "iou", "ap", "SNEMI3D", "MitoEM", "kind: evaluation", "--json"):
        assert word in text
    assert "2    the command line is invalid" in text
    assert "kind: evaluation" in help_of_run(capsys)


def help_of_run(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", "--help"]) == 0
    return capsys.readouterr().out
