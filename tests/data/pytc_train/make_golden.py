"""How the files here were made: PyTC v1 and this service load each other's training checkpoints.

Not run by the tests (it needs PyTC). Run once, from this repository's root, with this project's
environment and PyTC's sources beside it (as ``tests/data/pytc_golden/make_golden.py`` says)::

    git -C <mirror of PytorchConnectomics/pytorch_connectomics> archive v1.0 | tar -x -C /tmp/pytc-v1
    pip install --no-deps --target /tmp/pytc-deps yacs GPUtil einops
    PYTHONPATH=$PWD .venv/bin/python tests/data/pytc_train/make_golden.py /tmp/pytc-train-work

The driver runs each side in its own process: ours with this repository on ``PYTHONPATH``, PyTC's
with ``PYTC_PATH`` (default ``/tmp/pytc-v1:/tmp/pytc-deps``) and the modules its training loop
imports but never uses on a CPU stubbed (``stub_unused_modules`` of the inference goldens). On the
small volume written here (seed 0), with ``unet3d-train.yaml``:

1. ours: ``pytc run --pytc-config unet3d-train.yaml`` trains 4 iterations; its last checkpoint is
   kept as ``ours_checkpoint_00004.pth.tar``;
2. PyTC: ``Trainer(cfg, cpu, 'train', checkpoint=ours)`` with ``SOLVER.ITERATION_RESTART`` False:
   its start iteration, optimizer state (every tensor, every group's settings) and scheduler state
   against ours, then ``train()`` continues to iteration 6 and saves; with ITERATION_RESTART True:
   iteration 0 and an empty optimizer state. Recorded in ``records.json`` (``pytc_loads_ours``);
3. PyTC: ``Trainer(cfg, cpu, 'test', checkpoint=ours).test()`` (``--inference``): its uint8
   output goes to ``golden.npz`` (``pytc_output``, beside ``image`` and ``label``), and, run again
   with the last cast of ``test`` kept in float32 (:class:`_FloatNumpy`), the blended float it
   truncated (``pytc_float``);
4. ours: ``pytc run --pytc-config ... --inference --checkpoint ours``; how many uint8 voxels differ
   is recorded (``records.json``);
5. PyTC: ``Trainer(cfg, cpu, 'train').train()`` for 2 iterations from seed 0; its checkpoint is kept
   as ``pytc_checkpoint_00002.pth.tar`` and its structure (``describe``) in ``records.json``
   (``pytc_structure``);
6. PyTC: the learning rate its ``build_lr_scheduler`` gives at each iteration for the
   ``SCHEDULES`` here (``pytc_schedules``), which our converted schedules must give.

``tests/integration/test_pytc_train_checkpoints.py`` checks, without PyTC, that our checkpoints
have that structure, that ours loads PyTC's (iteration, optimizer tensors, schedule), that our
inference of ``ours_checkpoint_00004`` is PyTC's output, and ITERATION_RESTART both ways.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CONFIG = HERE / "unet3d-train.yaml"
SHAPE = (12, 40, 36)


def volumes() -> tuple[np.ndarray, np.ndarray]:
    """A smooth uint8 image (seed 0) and its binary label (image > 128)."""
    from scipy import ndimage

    noise = np.random.default_rng(0).random(SHAPE)
    smooth = ndimage.gaussian_filter(noise, 1.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    image = (smooth * 255).astype(np.uint8)
    return image, (image > 128).astype(np.uint8)


def describe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The structure of a training checkpoint as PyTC's loader reads it: the top-level keys, the
    model's keys and shapes, the optimizer's groups (settings, parameter counts) and per-parameter
    state (keys, shapes), the scheduler's keys."""
    import torch

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {"tensor": list(value.shape)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    optimizer = ckpt["optimizer"]
    return {
        "keys": sorted(ckpt),
        "iteration": ckpt["iteration"],
        "state_dict": {k: list(v.shape) for k, v in ckpt["state_dict"].items()},
        "param_groups": [
            {k: plain(v) for k, v in group.items() if k != "params"} | {"n_params": len(group["params"])}
            for group in optimizer["param_groups"]
        ],
        "state": {str(i): plain(s) for i, s in optimizer["state"].items()},
        "lr_scheduler": sorted(ckpt["lr_scheduler"]),
        "last_epoch": ckpt["lr_scheduler"]["last_epoch"],
        "last_lr": ckpt["lr_scheduler"].get("_last_lr"),
    }


# ---------------------------------------------------------------------------------------------
# PyTC's side (run in a process of its own, PyTC on the path)


def _pytc_cfg(work: Path, overrides: list[str], inference: bool = False) -> Any:
    import argparse

    from connectomics.config import get_cfg_defaults
    from connectomics.config.utils import overwrite_cfg, update_inference_cfg

    os.chdir(work)
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(overrides)
    if inference:
        update_inference_cfg(cfg)
    overwrite_cfg(cfg, argparse.Namespace(distributed=False))
    cfg.freeze()
    return cfg


def _same_optimizer(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    import torch

    if (
        len(ours["param_groups"]) != len(theirs["param_groups"])
        or ours["state"].keys() != theirs["state"].keys()
    ):
        return False
    for a, b in zip(ours["param_groups"], theirs["param_groups"], strict=True):
        if a != b:
            return False
    for i, state in ours["state"].items():
        other = theirs["state"][i]
        if state.keys() != other.keys():
            return False
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if not torch.equal(value, other[key]):
                    return False
            elif value != other[key]:
                return False
    return True


def pytc_loads_ours(work: Path, ours: Path) -> dict[str, Any]:
    import torch
    from connectomics.engine import Trainer

    saved = torch.load(ours, map_location="cpu", weights_only=True)
    cfg = _pytc_cfg(work, ["SOLVER.ITERATION_TOTAL", "6", "DATASET.OUTPUT_PATH", "out_resume/"])
    trainer = Trainer(cfg, torch.device("cpu"), "train", checkpoint=str(ours))
    weights = trainer.model.module.state_dict()
    scheduler = trainer.lr_scheduler.state_dict()
    record: dict[str, Any] = {
        "start_iter": trainer.start_iter,
        "weights_equal": all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items())
        and weights.keys() == saved["state_dict"].keys(),
        "optimizer_equal": _same_optimizer(trainer.optimizer.state_dict(), saved["optimizer"]),
        "scheduler_last_epoch": scheduler["last_epoch"],
        "scheduler_last_lr": scheduler["_last_lr"],
        "group_lrs": sorted({g["lr"] for g in trainer.optimizer.param_groups}),
    }
    trainer.train()
    resumed = torch.load(work / "out_resume" / "checkpoint_00006.pth.tar", map_location="cpu")
    record["continued_to"] = resumed["iteration"]
    record["continued_last_epoch"] = resumed["lr_scheduler"]["last_epoch"]

    cfg = _pytc_cfg(work, ["SOLVER.ITERATION_RESTART", "True", "DATASET.OUTPUT_PATH", "out_restart/"])
    trainer = Trainer(cfg, torch.device("cpu"), "train", checkpoint=str(ours))
    weights = trainer.model.module.state_dict()
    record["restart"] = {
        "start_iter": trainer.start_iter,
        "optimizer_state_empty": not trainer.optimizer.state_dict()["state"],
        "weights_equal": all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items()),
        "scheduler_last_epoch": trainer.lr_scheduler.state_dict()["last_epoch"],
    }
    return record


class _FloatNumpy:
    """``numpy`` for PyTC's ``trainer`` module, but its ``uint8`` is ``float32``: ``Trainer.test``'s
    last cast keeps the blended float (clipped at 0, times 255) instead of truncating it."""

    def __getattr__(self, name: str) -> Any:
        return np.float32 if name == "uint8" else getattr(np, name)


def pytc_tests_ours(work: Path, ours: Path) -> tuple[np.ndarray, np.ndarray]:
    """PyTC's uint8 output for ``ours``, and the float it truncated (times 255)."""
    import h5py
    import torch
    from connectomics.engine import Trainer, trainer

    outputs = []
    for numpy in (np, _FloatNumpy()):
        trainer.np = numpy  # type: ignore[attr-defined]
        for old in (work / "out").glob("result*.h5"):
            old.unlink()
        cfg = _pytc_cfg(work, [], inference=True)
        Trainer(cfg, torch.device("cpu"), "test", checkpoint=str(ours)).test()
        written = sorted((work / "out").glob("result*.h5"))
        with h5py.File(written[0], "r") as f:
            outputs.append(np.asarray(f["vol0"]))
    trainer.np = np  # type: ignore[attr-defined]
    return outputs[0], outputs[1]


def pytc_trains(work: Path) -> Path:
    import torch
    from connectomics.engine import Trainer

    torch.manual_seed(0)
    cfg = _pytc_cfg(work, ["SOLVER.ITERATION_TOTAL", "2", "DATASET.OUTPUT_PATH", "out_pytc/"])
    trainer = Trainer(cfg, torch.device("cpu"), "train")
    trainer.train()
    return work / "out_pytc" / "checkpoint_00002.pth.tar"


SCHEDULES = {  # name: (overrides, iterations): PyTC's learning rate at each iteration
    "WarmupCosineLR": (["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.WARMUP_ITERS", "3",
                        "SOLVER.WARMUP_FACTOR", "0.1", "SOLVER.ITERATION_TOTAL", "10"], 10),
    "MultiStepLR": (["SOLVER.STEPS", "(3, 5)", "SOLVER.GAMMA", "0.5", "SOLVER.ITERATION_TOTAL", "8"], 8),
}  # fmt: skip


def pytc_schedules() -> dict[str, list[float]]:
    """The learning rate PyTC's ``build_lr_scheduler`` gives at each iteration of ``SCHEDULES``."""
    import torch
    from connectomics.config import get_cfg_defaults
    from connectomics.engine.solver import build_lr_scheduler

    rates = {}
    for name, (overrides, iterations) in SCHEDULES.items():
        cfg = get_cfg_defaults()
        cfg.merge_from_file(str(CONFIG))
        cfg.merge_from_list(overrides)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
        scheduler = build_lr_scheduler(cfg, optimizer)
        lrs = []
        for _ in range(iterations):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates[name] = lrs
    return rates


def pytc_main(step: str, work: Path, extra: list[str]) -> None:
    sys.path.insert(0, str(REPO / "tests" / "data" / "pytc_golden"))
    from make_golden import stub_unused_modules  # the inference goldens' stubs

    stub_unused_modules()
    if step == "loads":
        result: Any = pytc_loads_ours(work, Path(extra[0]))
    elif step == "test":
        uint8, scaled = pytc_tests_ours(work, Path(extra[0]))
        np.save(work / "pytc_output.npy", uint8)
        np.save(work / "pytc_float.npy", scaled / np.float32(255))
        result = "ok"
    elif step == "schedules":
        result = pytc_schedules()
    elif step == "train":
        result = str(pytc_trains(work))
    else:
        raise SystemExit(f"unknown step {step}")
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The driver (ours in this process)


def _pytc(step: str, work: Path, *extra: str) -> Any:
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTC_PATH", "/tmp/pytc-v1:/tmp/pytc-deps"))
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--pytc", step, str(work), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"PyTC step {step} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _ours(work: Path, *args: str) -> None:
    from service.cli import main as cli

    code = cli(["run", "--pytc-config", str(CONFIG), *args, "--data-root", str(work), "--quiet"])
    if code != 0:
        raise SystemExit(f"pytc run {args} exited {code}")


def main() -> None:
    import h5py
    import torch

    from volumes.box import Box
    from volumes.open import open_volume

    work = Path(sys.argv[1]).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    image, label = volumes()
    for name, data in (("train.h5", image), ("label.h5", label), ("im.h5", image)):
        with h5py.File(work / "data" / name, "w") as f:
            f.create_dataset("main", data=data)

    _ours(work)  # 1
    ours = work / "ours_checkpoint_00004.pth.tar"
    shutil.copyfile(work / "out" / "checkpoint_00004.pth.tar", ours)
    shutil.copyfile(ours, HERE / ours.name)
    records: dict[str, Any] = {"pytc_loads_ours": _pytc("loads", work, str(ours))}  # 2
    records["pytc_schedules"] = _pytc("schedules", work)  # 6
    _pytc("test", work, str(ours))  # 3
    theirs, theirs_float = np.load(work / "pytc_output.npy"), np.load(work / "pytc_float.npy")
    _ours(work, "--inference", "--checkpoint", str(ours))  # 4
    written = open_volume(work / "out" / "result.zarr", "vol0")
    mine = written.read(Box.of_shape(written.shape))
    records["inference_uint8_differing_voxels"] = int(np.count_nonzero(mine != theirs))
    records["inference_uint8_max_difference"] = int(np.abs(mine.astype(int) - theirs).max())
    pytc_ckpt = Path(_pytc("train", work))  # 5
    shutil.copyfile(pytc_ckpt, HERE / "pytc_checkpoint_00002.pth.tar")
    saved = torch.load(pytc_ckpt, map_location="cpu", weights_only=True)
    records["pytc_structure"] = describe(saved)
    records["ours_structure"] = describe(torch.load(ours, map_location="cpu", weights_only=True))
    np.savez_compressed(
        HERE / "golden.npz", image=image, label=label, pytc_output=theirs, pytc_float=theirs_float
    )
    (HERE / "records.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: records[k] for k in records if k.startswith(("pytc_loads", "inference"))}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--pytc":
        pytc_main(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
    else:
        main()
