"""``make demo-model`` (``service.demo.model``): the recipe end to end on a tiny volume, through the
real ``pytc run`` for training and for scoring, and the shipped checkpoint it made."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from models.unet3d import build_unet3d
from service.demo import DEMO_CONFIG
from service.demo.model import main
from volumes.synth import generate_em_volume

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "demo_unet3d.pth.tar"
SHAPE, PATCH, ITERATIONS = (12, 48, 48), (5, 33, 33), 40


def tiny_argv(work: Path, out: Path, patch: tuple[int, int, int] = PATCH) -> list[str]:
    return [
        *("--out", str(out), "--dir", str(work)),
        *("--volume-shape", *map(str, SHAPE), "--patch-size", *map(str, patch)),
        *("--iterations", str(ITERATIONS), "--threads", "1"),
    ]


def independent_dice(prediction: Path) -> float:
    """The stored uint8 probabilities (int(255 p), truncated as PyTC writes them) at >= 0.5 against
    the generator's own truth."""
    stored = np.asarray(zarr.open_group(str(prediction), mode="r")["pred/0"])  # the image's level 0
    # channels: inside a cell, then the softmax of membrane, cytoplasm, mitochondria
    assert stored.shape == (4, *SHAPE) and stored.dtype == np.uint8
    pred = stored[3].astype(np.float64) / 255.0 >= 0.5
    truth = generate_em_volume(SHAPE, seed=2).mito > 0
    return float(2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth)))


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTC_STATE_DIR", str(tmp_path / ".pytc"))


@pytest.mark.slow
def test_recipe_trains_scores_and_records_through_pytc_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, out = tmp_path / "work", tmp_path / "demo.pth.tar"
    assert main(tiny_argv(work, out)) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"val_dice=(\S+) wall=\d+s checkpoint=(\S+) \(work folder (\S+)\)", line)
    assert match is not None, line
    assert (Path(match[2]), Path(match[3])) == (out, work)

    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    dice = independent_dice(work / "val-pred.zarr")
    assert dice > 0.5  # the recipe learned: a model that finds nothing scores 0
    assert ckpt["metrics"]["val_dice"] == pytest.approx(dice, abs=1e-12)
    assert float(match[1]) == pytest.approx(dice, abs=5e-5)

    training = ckpt["training"]
    assert training["command"].startswith("python -m service.demo.model --out ")
    assert "--iterations 40" in training["command"]
    assert training["wall_seconds"] > 0 and training["torch_version"] == str(torch.__version__)
    assert training["recipe"]["volume_shape"] == list(SHAPE) and training["score_job"]["kind"] == "inference"
    assert ckpt["architecture"] == "unet3d" and ckpt["config"] == DEMO_CONFIG
    assert ckpt["iteration"] == ITERATIONS
    build_unet3d(ckpt["config"]).load_state_dict(ckpt["state_dict"])

    # The documents are kept for a reader, and the checkpoint holds the one that trained it.
    train_doc = yaml.safe_load((work / "demo-model-train.yaml").read_text())
    assert train_doc["kind"] == "training" and ckpt["job"] == train_doc
    assert train_doc["solver"]["schedule"] == {"kind": "warmup_cosine", "warmup": 0}
    score_doc = yaml.safe_load((work / "demo-model-score.yaml").read_text())
    assert score_doc["model"]["checkpoint"] == f"runs/demo_unet3d/checkpoint_{ITERATIONS:05d}.pth.tar"
    assert (
        score_doc["output"]["activation"] == ["sigmoid", "softmax"] and score_doc["window"]["overlap"] == 0.5
    )


def test_a_training_job_that_cannot_run_fails_the_recipe(tmp_path: Path) -> None:
    out = tmp_path / "demo.pth.tar"
    assert main(tiny_argv(tmp_path / "work", out, patch=(SHAPE[0] + 1, 33, 33))) == 2
    assert not out.exists()


@pytest.mark.skipif(not SHIPPED.exists(), reason="demo checkpoint not built")
def test_shipped_demo_checkpoint_loads_safely_and_names_its_recipe() -> None:
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert ckpt["architecture"] == "unet3d" and ckpt["schema_version"] == 1
    assert ckpt["config"] == DEMO_CONFIG
    assert ckpt["metrics"]["val_dice"] >= 0.95
    assert ckpt["training"]["command"].startswith("python -m service.demo.model ")
    assert SHIPPED.stat().st_size < 5 * 2**20
    build_unet3d(ckpt["config"]).load_state_dict(ckpt["state_dict"])
