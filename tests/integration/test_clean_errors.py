"""A job that cannot run as written, or that fails, reaches its user as one clean line: from ``pytc
run`` (a real process), and from a real ``pytc-serve`` (a 422 naming the field, and a log with no
traceback). The model is checked before any cluster starts, and never with an invitation to load
an untrusted pickle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from models.checkpoint import save_checkpoint
from models.unet3d import build_unet3d
from service.cli.run import LazyCluster
from tests.integration.service_fixtures import assert_problem, dumps, running_service, wait_for_state
from tests.training_helpers import training_doc, write_data
from workers.runtime.precision import unsupported_precisions
from workers.runtime.state import worker_state

pytestmark = pytest.mark.slow

CONFIG: dict[str, Any] = {"in_channels": 1, "out_channels": 1, "filters": [2, 4], "isotropy": [False, False]}
PYTC = shutil.which("pytc", path=str(Path(sys.executable).parent)) or "pytc"
NEVER = ("Traceback (most recent call last)", "Compute Failed", "weights_only=False", "safe_globals")


class Custom:
    """An object of the test's own class: unpickling a checkpoint that holds one would run code."""

    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


class FailsOnData(torch.nn.Module):
    """Passes the admission probe (zeros), then fails on every block of real data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() > 0):
            raise RuntimeError("this model refuses data")
        return x


def _checkpoints(root: Path) -> dict[str, Path]:
    """A good checkpoint, and each bad one this test shows (``missing`` is never written)."""
    good = root / "good.pth"
    save_checkpoint(good, {"state_dict": build_unet3d(CONFIG)})
    files = {name: root / f"{name}.pth" for name in ("missing", "junk", "truncated", "custom_class")}
    files["junk"].write_bytes(b"\x00junk, not a checkpoint" * 40)
    files["truncated"].write_bytes(good.read_bytes()[:3000])
    torch.save({"state_dict": Custom()}, files["custom_class"])
    return {"good": good, **files}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clean_errors")
    write_data(folder)  # em.zarr: raw (uint8), mito (the training label)
    _checkpoints(folder)
    with warnings.catch_warnings():  # torch.jit is deprecated; its files are still a format we take
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(FailsOnData()).save(str(folder / "fails.pt"))
    return folder


def inference_doc(output: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"architecture": "unet3d", "config": CONFIG, "checkpoint": "good.pth"},
        "window": {"patch_size": [5, 17, 17], "stride": [3, 12, 12], "batch_size": 2},
        "output": {"path": output, "dataset": "pred", "chunks": [8, 16, 16]},
        "compute": {"block_shape": [8, 32, 32]},
    }
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return doc


def pytc_run(root: Path, doc: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [PYTC, "run", str(job), "--quiet", *flags],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTC_DATA_ROOTS": str(root), "PYTC_TORCH_THREADS": "1"},
    )


def one_clean_line(proc: subprocess.CompletedProcess[str], code: int, start: str) -> str:
    """The process's stderr is exactly one line, starting with ``start``, and nothing unsafe."""
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    assert not any(text in proc.stderr for text in NEVER), proc.stderr
    return lines[0]


BAD_CHECKPOINTS = [
    ("missing", "does not exist"),
    ("junk", "is not a file torch wrote"),
    ("truncated", "truncated or damaged"),
    ("custom_class", "Custom"),  # and the safe way out: re-save the weights alone
]


@pytest.mark.parametrize(("name", "says"), BAD_CHECKPOINTS)
def test_pytc_run_refuses_a_bad_checkpoint_in_one_line(root: Path, name: str, says: str) -> None:
    output = f"out_{name}.zarr"
    proc = pytc_run(root, inference_doc(output, **{"model.checkpoint": f"{name}.pth"}))
    line = one_clean_line(proc, 2, "error: model.checkpoint: ")
    assert f"{name}.pth" in line and says in line, line
    if name == "custom_class":
        assert 'torch.save({"state_dict": model.state_dict()}, path)' in line, line
    assert not (root / output).exists()


def test_the_good_checkpoint_runs(root: Path) -> None:
    """The documents above differ from a working one only in the checkpoint: not vacuous."""
    proc = pytc_run(root, inference_doc("out_good.zarr"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("out_good.zarr"), proc.stderr


def _state_id() -> int:
    return id(worker_state())


def test_the_one_embedded_worker_is_checked_here_before_any_cluster_and_shares_its_models() -> None:
    with LazyCluster(None, 1) as cluster:
        assert cluster.call(os.getpid) == os.getpid()
        assert cluster._client is None and cluster._cluster is None  # nothing started for the check
        # the worker's blocks find their models where the check left them: this process's state
        assert cluster.client().submit(_state_id, pure=False).result() == id(worker_state())
    with LazyCluster(None, 2) as cluster:  # worker processes: each checks where it will run
        assert cluster.call(os.getpid) != os.getpid()


def test_checked_on_a_worker_process_the_refusal_is_as_clean(root: Path) -> None:
    """With ``--workers 2`` the model is checked by a task on a worker process: it answers with the
    refusal instead of raising, so Dask logs nothing."""
    doc = inference_doc("out_workers.zarr", **{"model.checkpoint": "custom_class.pth"})
    line = one_clean_line(pytc_run(root, doc, "--workers", "2"), 2, "error: model.checkpoint: ")
    assert "Custom" in line


def test_a_training_job_names_its_bad_starting_weights(root: Path) -> None:
    for name, says in BAD_CHECKPOINTS:
        doc = training_doc(**{"model.init": f"{name}.pth", "checkpoint.dir": f"runs/{name}"})
        line = one_clean_line(pytc_run(root, doc), 2, "error: model.init: ")
        assert f"{name}.pth" in line and says in line, line


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_precision_this_cpu_lacks_is_refused_naming_the_cpu(root: Path, precision: str) -> None:
    reasons = dict(unsupported_precisions("cpu")[1])
    output = f"out_{precision}.zarr"
    inference = inference_doc(output, **{"compute.precision": precision, "compute.device": "cpu"})
    training = training_doc(
        **{"compute.precision": precision, "compute.device": "cpu", "checkpoint.dir": f"runs/{precision}"}
    )
    for doc in (inference, training):
        proc = pytc_run(root, doc)
        if precision in reasons:
            line = one_clean_line(proc, 2, "error: compute.precision: the CPU of this machine")
            assert f"has no native {precision}" in line and line.endswith("use float32"), line
        else:  # this CPU runs it natively: the job runs
            assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_failing_block_is_the_jobs_one_error_line(root: Path, workers: str) -> None:
    doc = inference_doc(f"out_fails_{workers}.zarr", model={"torchscript": "fails.pt"})
    line = one_clean_line(pytc_run(root, doc, "--workers", workers), 1, "error: the job failed: block ")
    assert "this model refuses data" in line


@pytest.fixture(scope="module")
def service(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with running_service(root, tmp_path_factory.mktemp("state")) as running:
        yield running.url, running.log


def test_the_service_answers_422_naming_the_field_and_logs_no_traceback(
    root: Path, service: tuple[str, Path]
) -> None:
    url, log = service
    reasons = dict(unsupported_precisions("cpu")[1])
    cases: list[tuple[dict[str, Any], str, str]] = [
        (inference_doc("s.zarr", **{"model.checkpoint": f"{name}.pth"}), "model.checkpoint", says)
        for name, says in BAD_CHECKPOINTS
    ]
    cases += [
        (
            training_doc(**{"model.init": "custom_class.pth", "checkpoint.dir": "runs/s"}),
            "model.init",
            "Custom",
        ),
        (inference_doc("s.zarr", **{"model.config": {**CONFIG, "kernel": 3}}), "model.config", "kernel"),
    ]
    cases += [
        (inference_doc("s.zarr", **{"compute.precision": p, "compute.device": "cpu"}), "compute.precision", p)
        for p in reasons
    ]
    for doc, field, says in cases:
        response = httpx.post(f"{url}/v1/jobs", content=dumps(doc), timeout=120)
        body = assert_problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [field], body
        assert says in body["detail"] and not any(text in body["detail"] for text in NEVER), body
    # a block that fails: the job says so; the log holds no traceback of it either
    response = httpx.post(  # its model is checked in a child process of the worker: seconds
        f"{url}/v1/jobs",
        content=dumps(inference_doc("f.zarr", model={"torchscript": "fails.pt"})),
        timeout=120,
    )
    assert response.status_code == 202, response.text
    job = wait_for_state(url, response.json()["id"], ("succeeded", "failed", "cancelled"))
    assert job["state"] == "failed" and "this model refuses data" in job["error"]["detail"], job
    text = log.read_text()
    assert not any(marker in text for marker in NEVER[:2]), text[-5000:]
