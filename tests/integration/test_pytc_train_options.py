"""PyTC training options through the whole conversion: a config with a semantic distance head, a
regulariser, WarmupMultiStepLR and PyTC's per-group solver keys converts, runs, and writes a
checkpoint in PyTC's layout; the converted schedule gives upstream's rates.

The upstream values are ``tests/data/pytc_golden/training_golden.npz`` (``make_training_golden.py``
says how they were made); the small config and data are ``tests/data/pytc_train``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from service.cli import main
from service.documents.training import parse_training
from service.pytc.convert import convert_pytc
from workers.training.setup import build_model, make_trainer

DATA = Path(__file__).resolve().parents[1] / "data"
CONFIG = DATA / "pytc_train" / "unet3d-train.yaml"
GOLDEN = DATA / "pytc_golden" / "training_golden.npz"

DISTANCE_AND_FG_DT = [
    "MODEL.OUT_PLANES", "2",
    "MODEL.TARGET_OPT", "['0', '6-2d-4-50']",
    "MODEL.LOSS_OPTION", "[['WeightedBCEWithLogitsLoss', 'DiceLoss'], ['WeightedMSE']]",
    "MODEL.OUTPUT_ACT", "[['none', 'sigmoid'], ['tanh']]",
    "MODEL.LOSS_WEIGHT", "[[1.0, 1.0], [4.0]]",
    "MODEL.WEIGHT_OPT", "[['0', '0'], ['0']]",
    "MODEL.REGU_OPT", "['FgDT']", "MODEL.REGU_TARGET", "[[0, 1]]", "MODEL.REGU_WEIGHT", "[0.5]",
    "SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.01",
]  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    label = np.zeros((8, 24, 24), dtype=np.uint16)
    label[:, 4:14, 3:12], label[2:7, 12:22, 10:20] = 1, 2
    with h5py.File(tmp_path / "data" / "train.h5", "w") as f:
        f.create_dataset("main", data=(rng.random(label.shape) * 255).astype(np.uint8))
    with h5py.File(tmp_path / "data" / "label.h5", "w") as f:
        f.create_dataset("main", data=label)
    return tmp_path


def test_converted_warmup_multistep_gives_pytcs_rates(root: Path) -> None:
    overrides = [
        "SOLVER.NAME", "SGD", "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.BASE_LR", "0.02",
        "SOLVER.WARMUP_ITERS", "50", "SOLVER.WARMUP_FACTOR", "0.001", "SOLVER.STEPS", "(100, 200)",
        "SOLVER.GAMMA", "0.5", "SOLVER.ITERATION_TOTAL", "300",
    ]  # fmt: skip
    doc = convert_pytc([(CONFIG.name, CONFIG.read_text())], overrides).document
    job = parse_training(doc, [root])
    trainer = make_trainer(job, build_model(job), torch.device("cpu"))
    rates = []
    for _ in range(300):
        rates.append(trainer.lr)
        trainer.optimizer.step()
        trainer.scheduler.step()
    with np.load(GOLDEN) as golden:
        np.testing.assert_allclose(rates, golden["lr/WarmupMultiStepLR"], rtol=1e-12, atol=0)


@pytest.mark.slow
def test_a_distance_head_with_a_regulariser_trains_into_pytcs_checkpoint_layout(root: Path) -> None:
    argv = ["run", "--pytc-config", str(CONFIG), *DISTANCE_AND_FG_DT, "SOLVER.ITERATION_TOTAL", "2"]
    assert main([*argv, "--data-root", str(root), "--quiet"]) == 0
    ckpt: dict[str, Any] = load_checkpoint(root / "out" / "checkpoint_00002.pth.tar")
    assert ckpt["iteration"] == 2
    assert [h["kind"] for h in ckpt["heads"]] == ["binary", "distance"]
    assert ckpt["heads"][1]["activation"] == "tanh" and ckpt["heads"][1]["loss"]["mse"] == 4.0
    state, groups = ckpt["state_dict"], ckpt["optimizer"]["param_groups"]
    assert len(groups) == len(state) - sum(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in state
    )
    assert all(len(g["params"]) == 1 for g in groups)  # one per parameter, as PyTC's build_optimizer
    assert {(g["initial_lr"], g["weight_decay"]) for g in groups} == {(0.01, 1e-4), (0.02, 0.01), (0.01, 0.0)}
