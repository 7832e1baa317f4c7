"""Training through ``pytc run`` on real Dask clusters and real stores: exact resume and restart,
bad inputs, a worker killed mid-training, and train -> register -> infer by name on synthetic EM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

from service.cli import main
from tests.integration.cluster_fixtures import free_port, stop, wait_until
from tests.training_helpers import same_weights, training_doc, write_data

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One local cluster shared by the module's runs (each would otherwise start its own)."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        resources={"GPU": 1},
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_data(tmp_path)
    monkeypatch.setenv("PYTC_STATE_DIR", str(tmp_path / ".pytc"))
    return tmp_path


def pytc_run(
    root: Path, doc: dict[str, Any], name: str, scheduler: str | None, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, Any]]:
    """``pytc run`` in-process; returns the exit code, stderr and the ``--report`` JSON."""
    job = root / f"{name}.yaml"
    job.write_text(yaml.safe_dump(doc))
    report = root / f"{name}.report.json"
    argv = ["run", str(job), "--data-root", str(root), "--report", str(report)]
    code = main([*argv, "--scheduler", scheduler] if scheduler else argv)
    err = capsys.readouterr().err
    return code, err, json.loads(report.read_text()) if report.exists() else {}


STEP = {"kind": "step", "milestones": [3], "gamma": 0.5}


def test_exact_resume_through_two_runs_equals_one(
    root: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    common = {"solver.schedule": STEP, "solver.save_every": 2}
    code, _, straight = pytc_run(
        root,
        training_doc(**common, **{"solver.iterations": 8, "checkpoint.dir": "runs/straight"}),
        "a",
        scheduler,
        capsys,
    )
    assert code == 0 and straight["iteration"] == 8
    code, _, half = pytc_run(
        root,
        training_doc(**common, **{"solver.iterations": 4, "checkpoint.dir": "runs/half"}),
        "b",
        scheduler,
        capsys,
    )
    assert code == 0 and half["iteration"] == 4
    resume = {
        "solver.iterations": 8,
        "checkpoint.dir": "runs/resumed",
        "checkpoint.resume_from": half["checkpoint"],
    }
    code, err, resumed = pytc_run(
        root, training_doc(**common, **resume), "c", None, capsys
    )  # embedded cluster
    assert code == 0, err
    assert resumed["start_iteration"] == 4 and f"resumed from {half['checkpoint']} (iteration 4)" in err
    assert same_weights(straight["checkpoint"], resumed["checkpoint"])
    assert not same_weights(straight["checkpoint"], half["checkpoint"])


def test_restart_takes_weights_only_like_init(
    root: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, first = pytc_run(root, training_doc(**{"solver.iterations": 3}), "first", scheduler, capsys)
    assert code == 0
    restart = {"checkpoint.resume_from": first["checkpoint"], "checkpoint.restart": True}
    code, err, restarted = pytc_run(
        root,
        training_doc(**restart, **{"checkpoint.dir": "runs/restart", "solver.iterations": 2}),
        "r",
        scheduler,
        capsys,
    )
    assert code == 0, err
    assert (
        restarted["start_iteration"] == 0
        and restarted["iteration"] == 2
        and restarted["resumed_from"] is None
    )
    assert Path(restarted["checkpoint"]).name == "checkpoint_00002.pth.tar"
    init = {"model.init": first["checkpoint"], "checkpoint.dir": "runs/init", "solver.iterations": 2}
    code, _, tuned = pytc_run(root, training_doc(**init), "i", scheduler, capsys)
    assert code == 0 and same_weights(restarted["checkpoint"], tuned["checkpoint"])


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"data.label.dataset": "short"}, "data.label", "differs from the spatial shape"),
        ({"sampling.patch_size": [13, 17, 17]}, "sampling.patch_size", "larger than the region"),
        ({"model.config.out_channels": 3}, "model.config.out_channels", "need 1"),
    ],
)
def test_bad_inputs_exit_2_naming_the_field(
    root: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], field: str, words: str
) -> None:
    code, err, _ = pytc_run(root, training_doc(**changes), "bad", None, capsys)  # refused before any cluster
    assert code == 2
    assert f"error: {field}: " in err and words in err
    assert not (root / "runs").exists()


def test_checkpoint_of_another_architecture_exits_2_naming_layers(
    root: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = {"model.config.filters": [2, 6], "checkpoint.dir": "runs/other", "solver.iterations": 1}
    code, _, trained = pytc_run(root, training_doc(**other), "other", scheduler, capsys)
    assert code == 0
    code, err, _ = pytc_run(
        root, training_doc(**{"model.init": trained["checkpoint"]}), "bad", scheduler, capsys
    )
    assert code == 2 and "error: model.init: " in err
    assert "down_layers.1.1.0.weight: expected (4, 2, 1, 3, 3), found (6, 2, 1, 3, 3)" in err


def test_label_without_foreground_fails_clearly(
    root: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = training_doc(
        **{"data.label.dataset": "empty", "solver.iterations": 1000, "sampling.reject": {"budget": 200}}
    )
    code, err, _ = pytc_run(root, doc, "empty", scheduler, capsys)
    assert code == 1
    assert "no foreground" in err and "rejection budget is 200" in err


# --- a worker killed mid-training ----------------------------------------------------------------


def _worker(address: str, name: str, logs: Path) -> subprocess.Popen[bytes]:
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process)
    cmd = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--resources", "GPU=1"]
    cmd += ["--name", name, "--host", "127.0.0.1", "--no-dashboard"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def test_killed_worker_is_replaced_and_training_resumes_from_the_latest_checkpoint(root: Path) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with open(root / "scheduler.log", "wb") as log:
        sched = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs = [sched, _worker(address, "w0", root)]
    try:
        doc = training_doc(**{"solver.iterations": 150, "solver.save_every": 10, "checkpoint.keep_last": 50})
        (root / "job.yaml").write_text(yaml.safe_dump(doc))
        cmd = [sys.executable, "-m", "service", "run", str(root / "job.yaml"), "--data-root", str(root)]
        cmd += ["--scheduler", address, "--report", str(root / "report.json")]
        run = subprocess.Popen(
            cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy()
        )
        procs.append(run)
        folder = root / "runs" / "a"
        wait_until(lambda: (folder / "checkpoint_00010.pth.tar").exists(), timeout=120, every=0.02)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        latest = max(int(p.name[11:16]) for p in folder.glob("checkpoint_*.pth.tar"))
        assert latest < 150, "training finished before the kill; make it longer"
        procs.append(_worker(address, "w1", root))
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-3000:]
        report = json.loads((root / "report.json").read_text())
        assert report["iteration"] == 150 and report["attempts"] == 2
        assert report["start_iteration"] == latest
        text = err.decode()
        assert f"resumed from {folder / f'checkpoint_{latest:05d}.pth.tar'} (iteration {latest})" in text
        assert out.decode().strip() == str(folder / "checkpoint_00150.pth.tar")
    finally:
        for proc in reversed(procs):
            stop(proc)


# --- train, register, infer by name ----------------------------------------------------------------

SYNTH_SHAPE = (32, 128, 128)
DICE_CONFIG = {"in_channels": 1, "out_channels": 1, "filters": [4, 8, 12], "isotropy": [False, False, False]}
DICE_PATCH = [5, 65, 65]


@pytest.mark.slow
def test_trained_model_registered_and_used_by_name_reaches_the_demo_dice(
    tmp_path: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from volumes.synth import generate_em_volume, write_synth

    monkeypatch.setenv("PYTC_STATE_DIR", str(tmp_path / ".pytc"))
    write_synth(tmp_path / "train.zarr", generate_em_volume(SYNTH_SHAPE, seed=1), chunks=(16, 64, 64))
    write_synth(tmp_path / "test.zarr", generate_em_volume(SYNTH_SHAPE, seed=2), chunks=(16, 64, 64))
    doc = training_doc(
        **{
            "data.image.path": "train.zarr",
            "data.label.path": "train.zarr",
            "model.config": DICE_CONFIG,
            "solver": {
                "iterations": 300,
                "batch_size": 2,
                "lr": 0.005,
                "schedule": {"kind": "warmup_cosine", "warmup": 10},
                "save_every": 100,
            },
            "sampling.patch_size": DICE_PATCH,
            "compute.threads": None,
            "register_as": "mito-synth",
        }
    )
    code, err, trained = pytc_run(tmp_path, doc, "train", scheduler, capsys)
    assert code == 0, err
    assert trained["registered_as"] == "mito-synth" and "registered as 'mito-synth'" in err
    registry = json.loads((tmp_path / ".pytc" / "models.json").read_text())
    assert registry["mito-synth"]["sha256"] == trained["sha256"]
    infer = {
        "kind": "inference",
        "input": {"path": "test.zarr", "dataset": "raw"},
        "model": {"name": "mito-synth"},
        "window": {"patch_size": DICE_PATCH, "overlap": 0.5, "batch_size": 4},
        "output": {"path": "pred.zarr", "dataset": "mito", "activation": ["sigmoid"], "chunks": [16, 64, 64]},
    }
    code, err, _ = pytc_run(tmp_path, infer, "infer", scheduler, capsys)
    assert code == 0, err
    pred = zarr.open_array(tmp_path / "pred.zarr" / "mito" / "0")[0] > 0.5
    truth = zarr.open_array(tmp_path / "test.zarr" / "mito" / "0")[:] > 0
    dice = 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))
    print(f"foreground Dice {dice:.4f} after {trained['iteration']} iterations in {trained['seconds']:.0f}s")
    assert dice >= 0.9
