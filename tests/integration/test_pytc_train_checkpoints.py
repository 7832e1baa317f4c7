"""Training checkpoints PyTC v1 and this service load from each other, without PyTC installed.

``tests/data/pytc_train/`` keeps what upstream PyTC did with them (``make_golden.py`` says how it
was made, once, on a CPU): the structure of a checkpoint PyTC's ``Trainer`` wrote, PyTC's own
checkpoint, ours that PyTC's ``Trainer`` loaded (``records.json``: its start iteration, optimizer and
schedule equal to ours, and training on from it), and PyTC's ``Trainer.test`` output of ours.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import load_checkpoint
from models.errors import CheckpointError
from service.cli import main
from service.documents.training import parse_training
from service.pytc.convert import convert_pytc
from volumes.box import Box
from volumes.open import open_volume
from workers.training.setup import build_model, make_trainer

DATA = Path(__file__).resolve().parents[1] / "data" / "pytc_train"
CONFIG = DATA / "unet3d-train.yaml"
PYTC_CKPT = DATA / "pytc_checkpoint_00002.pth.tar"
OURS_CKPT = DATA / "ours_checkpoint_00004.pth.tar"


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("pytc_train_make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
describe: Callable[[dict[str, Any]], dict[str, Any]] = MAKER.describe


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    with np.load(DATA / "golden.npz") as stored:
        arrays: dict[str, Any] = {key: stored[key] for key in stored.files}
    return arrays | json.loads((DATA / "records.json").read_text())


@pytest.fixture
def root(tmp_path: Path, golden: dict[str, Any]) -> Path:
    (tmp_path / "data").mkdir()
    for name, key in (("train.h5", "image"), ("label.h5", "label"), ("im.h5", "image")):
        with h5py.File(tmp_path / "data" / name, "w") as f:
            f.create_dataset("main", data=golden[key])
    (tmp_path / "given").mkdir()
    for source in (PYTC_CKPT, OURS_CKPT):
        shutil.copyfile(source, tmp_path / "given" / source.name)
    return tmp_path


def _run(root: Path, *args: str) -> None:
    argv = ["run", "--pytc-config", str(CONFIG), *args, "--data-root", str(root), "--quiet"]
    assert main(argv) == 0


@pytest.mark.slow
def test_our_checkpoint_has_the_structure_pytcs_trainer_loads(root: Path, golden: dict[str, Any]) -> None:
    """What PyTC's ``update_checkpoint`` reads, as PyTC's own training wrote it: the model's keys
    and shapes, one optimizer group per parameter with PyTC's settings (no weight decay for biases
    and BatchNorm), the per-parameter state, and the scheduler's counters."""
    _run(root, "SOLVER.ITERATION_TOTAL", "2")
    ours = describe(load_checkpoint(root / "out" / "checkpoint_00002.pth.tar"))
    theirs = golden["pytc_structure"]
    assert set(theirs["keys"]) <= set(ours["keys"])
    assert ours["iteration"] == theirs["iteration"] == 2
    assert ours["state_dict"] == theirs["state_dict"]
    assert ours["param_groups"] == theirs["param_groups"]
    assert {g["weight_decay"] for g in ours["param_groups"]} == {0.0, 1e-4}
    assert ours["state"] == theirs["state"]
    assert set(theirs["lr_scheduler"]) - {"milestones", "gamma"} <= set(ours["lr_scheduler"])


def test_pytcs_trainer_loaded_ours_and_trained_on(golden: dict[str, Any]) -> None:
    """Recorded from upstream: ``Trainer(cfg, cpu, 'train', checkpoint=ours)`` started at our
    iteration with our weights, optimizer state and schedule and trained on to iteration 6; with
    ``SOLVER.ITERATION_RESTART`` it took the weights only. The stored checkpoint is what it loaded."""
    loaded = golden["pytc_loads_ours"]
    assert loaded["start_iter"] == 4 and loaded["weights_equal"] and loaded["optimizer_equal"]
    assert loaded["scheduler_last_epoch"] == 4 and loaded["group_lrs"] == [0.005]
    assert loaded["continued_to"] == 6
    assert loaded["restart"] == {
        "start_iter": 0,
        "optimizer_state_empty": True,
        "weights_equal": True,
        "scheduler_last_epoch": 0,
    }
    assert describe(load_checkpoint(OURS_CKPT)) == golden["ours_structure"]


def test_we_load_pytcs_training_checkpoint(root: Path) -> None:
    """PyTC's checkpoint resumes here with its state: iteration, weights, every optimizer tensor and
    group setting, and its schedule where PyTC's own resume starts it (its ``last_epoch``)."""
    given = str(root / "given" / PYTC_CKPT.name)
    doc = convert_pytc([(CONFIG.name, CONFIG.read_text())], checkpoint=given).document
    job = parse_training(doc, [root])
    trainer = make_trainer(job, build_model(job), torch.device("cpu"))
    saved = load_checkpoint(given)
    trainer.restore(saved, given)
    assert trainer.iteration == saved["iteration"] == 2
    weights = trainer.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items())
    state = trainer.optimizer.state_dict()
    assert state["param_groups"] == saved["optimizer"]["param_groups"]
    assert state["state"].keys() == saved["optimizer"]["state"].keys()
    for i, tensors in saved["optimizer"]["state"].items():
        assert all(torch.equal(state["state"][i][k], v) for k, v in tensors.items())
    schedule = saved["lr_scheduler"]
    assert trainer.scheduler.last_epoch == schedule["last_epoch"] == 1
    assert [g["lr"] for g in trainer.optimizer.param_groups] == schedule["_last_lr"]
    assert trainer.scheduler.get_last_lr() == schedule["_last_lr"]


def test_a_pytc_checkpoint_in_a_job_with_one_group_names_param_groups(root: Path) -> None:
    """PyTC's optimizer state does not fit one parameter group: the error says which field would
    fit it, and restart: true."""
    given = str(root / "given" / PYTC_CKPT.name)
    doc = convert_pytc([(CONFIG.name, CONFIG.read_text())], checkpoint=given).document
    doc["solver"]["param_groups"] = "one"
    job = parse_training(doc, [root])
    trainer = make_trainer(job, build_model(job), torch.device("cpu"))
    with pytest.raises(
        CheckpointError, match=r"50 parameter groups: solver.param_groups: pytc\?.*restart: true"
    ):
        trainer.restore(load_checkpoint(given), given)


@pytest.mark.parametrize("name", sorted(MAKER.SCHEDULES))
def test_converted_schedules_give_pytcs_learning_rates(root: Path, golden: dict[str, Any], name: str) -> None:
    """SOLVER.LR_SCHEDULER_NAME converted and run by our trainer gives, iteration by iteration, the
    rate PyTC's own scheduler gave (recorded from upstream)."""
    overrides, iterations = MAKER.SCHEDULES[name]
    doc = convert_pytc([(CONFIG.name, CONFIG.read_text())], overrides).document
    job = parse_training(doc, [root])
    trainer = make_trainer(job, build_model(job), torch.device("cpu"))
    rates = []
    for _ in range(iterations):
        rates.append(trainer.lr)
        trainer.optimizer.step()
        trainer.scheduler.step()
    np.testing.assert_allclose(rates, golden["pytc_schedules"][name], rtol=1e-12, atol=0)


@pytest.mark.slow
def test_our_inference_of_our_checkpoint_is_pytcs_trainer_test(root: Path, golden: dict[str, Any]) -> None:
    """``pytc run --pytc-config --inference`` of our trained checkpoint against PyTC's
    ``Trainer.test`` of it: the float before the cast to 1e-5, uint8 bit for bit (the converted job
    runs PyTC's contiguous memory layout; channels-last put 1 voxel a grey level apart)."""
    ckpt = str(root / "given" / OURS_CKPT.name)
    _run(root, "--inference", "--checkpoint", ckpt)
    written = open_volume(root / "out" / "result.zarr", "vol0")
    ours = written.read(Box.of_shape(written.shape))
    theirs = golden["pytc_output"]
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.count_nonzero(ours != theirs) == golden["inference_uint8_differing_voxels"] == 0

    job = root / "float.yaml"
    argv = [
        "convert",
        str(CONFIG),
        "--inference",
        "--checkpoint",
        ckpt,
        "-o",
        str(job),
        "--data-root",
        str(root),
    ]
    assert main(argv) == 0
    doc = yaml.safe_load(job.read_text())
    doc["output"].update(path="out/float.zarr", dtype="float32")
    job.write_text(yaml.safe_dump(doc))
    assert main(["run", str(job), "--data-root", str(root), "--quiet"]) == 0
    written = open_volume(root / "out" / "float.zarr", "vol0")
    np.testing.assert_allclose(
        written.read(Box.of_shape(written.shape)), golden["pytc_float"], rtol=0, atol=1e-5
    )


@pytest.mark.slow
def test_iteration_restart_through_pytc_run(root: Path) -> None:
    """``SOLVER.ITERATION_RESTART`` from the config: True takes PyTC's checkpoint's weights only
    and trains from iteration 0 (AdamW's step count starts again); False resumes at its iteration."""
    given = str(root / "given" / PYTC_CKPT.name)
    _run(root, "SOLVER.ITERATION_RESTART", "True", "SOLVER.ITERATION_TOTAL", "2", "--checkpoint", given)
    restarted = load_checkpoint(root / "out" / "checkpoint_00002.pth.tar")
    assert restarted["iteration"] == 2
    assert {float(s["step"]) for s in restarted["optimizer"]["state"].values()} == {2.0}
    shutil.rmtree(root / "out")

    _run(root, "SOLVER.ITERATION_TOTAL", "4", "--checkpoint", given)
    assert sorted(p.name for p in (root / "out").glob("checkpoint_*")) == ["checkpoint_00004.pth.tar"]
    resumed = load_checkpoint(root / "out" / "checkpoint_00004.pth.tar")
    assert resumed["iteration"] == 4
    assert {float(s["step"]) for s in resumed["optimizer"]["state"].values()} == {4.0}


@pytest.mark.slow
def test_several_volumes_and_label_erosion_through_pytc_run(root: Path) -> None:
    """``DATASET.IMAGE_NAME a@b`` with its labels, and ``MODEL.LABEL_EROSION``: one training job over
    both volumes (PyTC's VolumeDataset rule), its checkpoint recording them and the eroded head."""
    _run(
        root,
        *("DATASET.IMAGE_NAME", "train.h5@im.h5", "DATASET.LABEL_NAME", "label.h5@label.h5"),
        *("MODEL.LABEL_EROSION", "1", "SOLVER.ITERATION_TOTAL", "2"),
    )
    ckpt = load_checkpoint(root / "out" / "checkpoint_00002.pth.tar")
    assert ckpt["iteration"] == 2 and ckpt["heads"][0]["label_erosion"] == 1
    job = json.loads(ckpt["job"]) if isinstance(ckpt["job"], str) else ckpt["job"]
    volumes = job["data"]["volumes"]
    assert [Path(v["image"]["path"]).name for v in volumes] == ["train.h5", "im.h5"]
    assert [Path(v["label"]["path"]).name for v in volumes] == ["label.h5", "label.h5"]


@pytest.mark.slow
def test_a_missing_second_label_is_refused_naming_its_pytc_key(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ("DATASET.IMAGE_NAME", "train.h5@im.h5", "DATASET.LABEL_NAME", "label.h5@nope.h5")
    argv = ["run", "--pytc-config", str(CONFIG), *names, "--data-root", str(root), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "DATASET.LABEL_NAME" in err and "data.volumes[1].label" in err and "nope.h5" in err
    assert not (root / "out").exists()
