"""``pytc run`` end to end: real stores, a real embedded Dask cluster, real models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr

from service.cli import main
from tests.helpers import reference_blend
from volumes.blocks import plan_blocks
from volumes.box import Box
from volumes.open import open_volume
from volumes.windows import WindowGrid
from workers.inference.job import WindowSpec
from workers.inference.ledger import Ledger, linear
from workers.inference.predictor import WindowPredictor

PATCH, STRIDE = (5, 17, 17), (2, 8, 8)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = (np.random.default_rng(0).random((14, 40, 44)) * 255).astype(np.uint8)
    zarr.open_group(tmp_path / "em.zarr", mode="w").create_array("raw", data=data, chunks=(8, 16, 16))
    scripted = torch.jit.script(TinyNet().eval())
    scripted.save(str(tmp_path / "net.pt"))
    return tmp_path


def job_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {
            "patch_size": list(PATCH),
            "stride": list(STRIDE),
            "blending": "gaussian",
            "batch_size": 4,
        },
        "output": {
            "path": "out.zarr",
            "dataset": "pred",
            "heads": [2],
            "activation": ["sigmoid"],
            "chunks": [4, 16, 16],
        },
        "compute": {"block_shape": [4, 16, 16]},
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return doc


def run(root: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    (root / "job.yaml").write_text(yaml.safe_dump(doc))
    code = main(["run", str(root / "job.yaml"), "--data-root", str(root), "--quiet"])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def expected_output(root: Path, activation: str = "sigmoid", tta: int = 1) -> np.ndarray:
    data = zarr.open_array(root / "em.zarr" / "raw")[:].astype(np.float32) / 255
    module = torch.jit.load(str(root / "net.pt"))
    predictor = WindowPredictor(module, torch.device("cpu"), (2,), (activation,), tta)  # type: ignore[arg-type]
    window = WindowSpec(PATCH, STRIDE, "gaussian")
    return reference_blend(data, (0, 0, 0), data.shape, window, predictor.predict, 2)


def read_output(path: Path, dataset: str = "pred") -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box.of_shape(volume.shape))


def test_run_equals_one_in_memory_pass_and_records_its_identity(root: Path) -> None:
    (root / "job.yaml").write_text(yaml.safe_dump(job_doc()))
    report = root / "report.json"
    args = ["run", str(root / "job.yaml"), "--data-root", str(root), "--quiet", "--report", str(report)]
    assert main(args) == 0
    out = read_output(root / "out.zarr")
    np.testing.assert_allclose(out, expected_output(root), rtol=1e-5, atol=1e-6)
    figures = json.loads(report.read_text())
    # 36 blocks on one worker: blocks' input was read while the block before them computed
    assert figures["blocks_total"] == 36 and figures["blocks_read_ahead"] > 0, figures
    assert figures["peak_rss_bytes"] > 100 * 2**20  # this process's high-water mark, torch in it
    attrs = open_volume(root / "out.zarr", "pred").attrs["pytc"]
    assert attrs["complete"] is True
    assert attrs["job"]["model"] == {"torchscript": "net.pt"}
    assert len(attrs["model_sha256"]) == 64 and attrs["version"]


def test_one_block_and_many_blocks_with_tta_and_pad_agree(root: Path) -> None:
    doc = job_doc(**{"window.tta": {"variants": 8, "reduce": "mean"}, "window.pad_size": [1, 4, 4]})
    assert run(root, doc)[0] == 0
    many = read_output(root / "out.zarr")
    doc = job_doc(
        **{
            "window.tta": {"variants": 8, "reduce": "mean"},
            "window.pad_size": [1, 4, 4],
            "compute.block_shape": [16, 48, 48],
            "output.path": "one.zarr",
        }
    )
    assert run(root, doc)[0] == 0
    np.testing.assert_allclose(many, read_output(root / "one.zarr"), rtol=1e-5, atol=1e-6)


def forget_second_z_row(run_dir: Path, counts: tuple[int, int, int] = (4, 3, 3)) -> int:
    """Un-record both passes of the blocks of the second z-row in the run's done record."""
    n = counts[0] * counts[1] * counts[2]
    ledger = Ledger.open(run_dir, n)
    row = [linear((1, y, x), counts) for y in range(counts[1]) for x in range(counts[2])]
    assert all(ledger.p2[i] for i in row)
    ledger.forget(1, row)
    ledger.forget(2, row)
    return len(row)


def test_rerun_resumes_and_recomputes_only_missing_blocks(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, job_doc())[0] == 0
    clean = read_output(root / "out.zarr")
    run_dir = next((root / "out.zarr" / ".pytc-run" / "pred").iterdir())
    assert forget_second_z_row(run_dir) == 9  # as if the run had died there
    volume = open_volume(root / "out.zarr", "pred", mode="r+")
    volume.write(Box((0, 4, 0, 0), (2, 4, 40, 44)), np.zeros((2, 4, 40, 44), np.float32))
    (root / "job.yaml").write_text(yaml.safe_dump(job_doc()))
    assert main(["run", str(root / "job.yaml"), "--data-root", str(root)]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err
    n_blocks = 4 * 3 * 3
    assert f"({n_blocks - 9} already done)" in err
    np.testing.assert_allclose(read_output(root / "out.zarr"), clean, rtol=1e-6, atol=1e-7)


def test_another_batch_size_resumes_the_same_output(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The batch size says how many windows share a forward pass, not what a window computes: a
    rerun with another one resumes the output instead of refusing it as another job's."""
    assert run(root, job_doc())[0] == 0
    clean = read_output(root / "out.zarr")
    (run_dir,) = (root / "out.zarr" / ".pytc-run" / "pred").iterdir()
    forget_second_z_row(run_dir)  # the second z-row of blocks is left to do
    volume = open_volume(root / "out.zarr", "pred", mode="r+")
    volume.write(Box((0, 4, 0, 0), (2, 4, 40, 44)), np.zeros((2, 4, 40, 44), np.float32))
    (root / "job.yaml").write_text(yaml.safe_dump(job_doc(**{"window.batch_size": 3})))
    assert main(["run", str(root / "job.yaml"), "--data-root", str(root)]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and f"({4 * 3 * 3 - 9} already done)" in err
    np.testing.assert_allclose(read_output(root / "out.zarr"), clean, rtol=1e-6, atol=1e-7)
    assert [d.name for d in run_dir.parent.iterdir()] == [run_dir.name]  # the same run, not another


def test_n5_in_and_out_opened_with_tensorstore(root: Path) -> None:
    import tensorstore as ts

    data = zarr.open_array(root / "em.zarr" / "raw")[:]
    src = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(root / "em.n5" / "raw")},
            "metadata": {
                "dimensions": list(data.shape[::-1]),
                "blockSize": [16, 16, 8],
                "dataType": "uint8",
                "compression": {"type": "gzip"},
            },
            "create": True,
        }
    ).result()
    (root / "em.n5" / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    src.write(data.transpose()).result()
    doc = job_doc(**{"input.path": "em.n5", "output.path": "out.n5", "output.format": "n5"})
    assert run(root, doc)[0] == 0
    out = ts.open(
        {"driver": "n5", "kvstore": {"driver": "file", "path": str(root / "out.n5" / "pred")}}
    ).result()
    values = out.read().result()
    assert values.shape == (44, 40, 14, 2)  # N5 stores axes reversed
    np.testing.assert_allclose(values.transpose(), expected_output(root), rtol=1e-5, atol=1e-6)


def test_zarr2_in_zarr3_out_uint8(root: Path) -> None:
    data = zarr.open_array(root / "em.zarr" / "raw")[:]
    zarr.open_group(root / "v2.zarr", mode="w", zarr_format=2).create_array(
        "raw", data=data, chunks=(8, 16, 16)
    )
    doc = job_doc(**{"input.path": "v2.zarr", "output.dtype": "uint8", "output.format": "zarr3"})
    assert run(root, doc)[0] == 0
    array = zarr.open_array(root / "out.zarr" / "pred")
    assert array.metadata.zarr_format == 3 and array.dtype == np.uint8
    np.testing.assert_allclose(array[:], np.rint(expected_output(root) * 255), atol=1)


def test_exported_program_runs(root: Path) -> None:
    sample = torch.zeros(4, 1, *PATCH)
    program = torch.export.export(TinyNet().eval(), (sample,))
    torch.export.save(program, str(root / "net.pt2"))
    doc = job_doc(model={"exported": "net.pt2"})
    assert run(root, doc)[0] == 0
    np.testing.assert_allclose(read_output(root / "out.zarr"), expected_output(root), rtol=1e-5, atol=1e-6)


def _unchanged(root: Path) -> None:
    assert not (root / "out.zarr").exists(), "nothing may be written for an invalid job"


BAD_SPECS = [
    ({"input.path": "missing.zarr"}, "input.path"),
    ({"input.dataset": "nope"}, "input.dataset"),
    ({"input.roi": {"offset": [0, 0, 0], "shape": [20, 40, 44]}}, "input.roi"),
    ({"output.activation": ["sigmoid", "none"]}, "output.activation"),
    ({"window.blending": "triangle"}, "window.blending"),
    ({"output.format": "tiff"}, "output.format"),
    ({"window.patch_size": [5, 17, 21], "window.tta": {"variants": 8}}, "window.tta"),
    ({"output.targets": ["binary", "binary"]}, "output.targets"),  # one head, two targets
    ({"output.targets": ["affinity"]}, "output.targets"),  # the model's 2 channels are no affinity
]


@pytest.mark.parametrize(("overrides", "field"), BAD_SPECS)
def test_invalid_spec_exits_2_naming_the_field(root, capsys, overrides, field):  # type: ignore[no-untyped-def]
    code, err = run(root, job_doc(**overrides), capsys)
    assert code == 2
    assert f"error: {field}" in err
    _unchanged(root)


def test_heads_not_matching_the_model_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(
        root, job_doc(**{"output.heads": [1, 2], "output.activation": ["sigmoid", "softmax"]}), capsys
    )
    assert code == 2 and "error: output.heads" in err
    _unchanged(root)


def test_existing_output_is_untouched_without_overwrite(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zarr.open_group(root / "out.zarr", mode="w").create_array(
        "pred", data=np.full((2, 14, 40, 44), 7, np.float32)
    )
    code, err = run(root, job_doc(), capsys)
    assert code == 2 and "error: output.path" in err and "overwrite" in err
    assert (read_output(root / "out.zarr") == 7).all()
    assert run(root, job_doc(**{"output.overwrite": True}))[0] == 0
    np.testing.assert_allclose(read_output(root / "out.zarr"), expected_output(root), rtol=1e-5, atol=1e-6)


def test_corrupt_checkpoint_exits_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "bad.pth.tar").write_bytes(b"not a checkpoint at all")
    model = {
        "architecture": "unet3d",
        "config": {"in_channels": 1, "out_channels": 2},
        "checkpoint": "bad.pth.tar",
    }
    code, err = run(root, job_doc(model=model), capsys)
    assert code == 2 and "error: model" in err and "bad.pth.tar" in err
    _unchanged(root)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_never_executed(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = root / "pwned"
    torch.save({"state_dict": {}, "evil": _Payload(str(marker))}, root / "evil.pth.tar")
    model = {
        "architecture": "unet3d",
        "config": {"in_channels": 1, "out_channels": 2},
        "checkpoint": "evil.pth.tar",
    }
    code, err = run(root, job_doc(model=model), capsys)
    assert code == 2 and "error: model" in err and "evil.pth.tar" in err
    assert not marker.exists()
    _unchanged(root)


def test_console_script_runs_as_a_process(root: Path) -> None:
    (root / "job.yaml").write_text(yaml.safe_dump(job_doc()))
    exe = shutil.which("pytc", path=str(Path(sys.executable).parent)) or "pytc"
    proc = subprocess.run(
        [exe, "run", "job.yaml", "--quiet"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTC_DATA_ROOTS": str(root)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("out.zarr")


def _worker_view(dask_worker: Any) -> tuple[int, bool, float, float]:
    """This worker's process, whether it samples its threads' stacks, and how often (ms) it checks
    its event loop and reads its memory (all decided when it starts)."""
    callbacks = dask_worker.periodic_callbacks
    return (
        os.getpid(),
        "profile" in callbacks,
        callbacks["tick"].callback_time,
        callbacks["memory_monitor"].callback_time,
    )


def _scheduler_tick(dask_scheduler: Any) -> float:
    return float(dask_scheduler.periodic_callbacks["tick"].callback_time)


@pytest.mark.parametrize("workers", [1, 2])
def test_embedded_workers_keep_their_event_loop_quiet_unless_the_user_asks(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stack sampling, a 1 s loop-health tick (Dask's is 20 ms) and memory read every 0.5 s
    (Dask: 0.1 s), in the workers and the embedded scheduler (workers.runtime.dask_settings)."""
    from service.cli.run import LazyCluster
    from workers.runtime.dask_settings import PROFILE_ENV, SETTINGS, env_name

    for key in SETTINGS:
        monkeypatch.delenv(env_name(key), raising=False)
    with LazyCluster(None, workers) as cluster:
        views = cluster.client().run(_worker_view)
        scheduler_tick = cluster.client().run_on_scheduler(_scheduler_tick)
    assert len(views) == workers
    assert {view[1:] for view in views.values()} == {(False, 1000.0, 500.0)}
    assert scheduler_tick == 1000.0
    # one worker runs on a thread of this process; several are processes of their own
    assert {view[0] == os.getpid() for view in views.values()} == {workers == 1}
    monkeypatch.setenv(PROFILE_ENV, "True")  # the user's own settings are kept
    monkeypatch.setenv(env_name("distributed.admin.tick.interval"), "20ms")
    import dask

    dask.config.refresh()
    try:
        with LazyCluster(None, 1) as cluster:
            assert {view[1:] for view in cluster.client().run(_worker_view).values()} == {(True, 20.0, 500.0)}
    finally:
        monkeypatch.delenv(PROFILE_ENV)
        monkeypatch.delenv(env_name("distributed.admin.tick.interval"))
        dask.config.refresh()


def test_the_collector_pytc_pauses_for_start_up_runs_for_the_job_and_after(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``pytc`` program starts with the garbage collector off (service.entry); ``run`` turns it
    back on once the model is checked, before any block runs, having frozen what start-up made; a
    failure before the model check and every other command turn it back on too."""
    import gc

    from service.kinds.inference import InferenceKind

    during: list[bool] = []
    real_run = InferenceKind.run

    def watched(*args: Any, **kwargs: Any) -> Any:
        during.append(gc.isenabled())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(InferenceKind, "run", watched)
    frozen = gc.get_freeze_count()
    try:
        gc.disable()  # as service.entry.pytc starts
        assert run(root, job_doc(), capsys)[0] == 0
        assert during == [True] and gc.isenabled() and gc.get_freeze_count() > frozen

        gc.disable()
        code, err = run(root, job_doc(**{"input.dataset": "nope"}), capsys)
        assert code == 2 and "nope" in err and gc.isenabled()

        gc.disable()
        assert main(["synth", str(root / "s.zarr"), "--shape", "8", "32", "32"]) == 0
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()  # this test process's objects go back to the collector


class _SlowPredictor:
    """The job's predictor, each batch taking a while (a bigger model on a slower device)."""

    def __init__(self, real: Any, seconds: float) -> None:
        self.real, self.seconds = real, seconds

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.real.predict(batch)


@pytest.mark.slow  # about 5 s: its model takes 0.1 s a batch, so that progress is seen moving
def test_progress_moves_in_steps_while_blocks_run(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real Dask: windows counted as batches end inside running tasks (worker events), pass-2
    chunks after them, one line per report in a log, the last one the exact total of steps."""
    import workers.inference.model_cache as model_cache
    from service.progress import ProgressLine

    real = model_cache.cached_predictor
    monkeypatch.setattr(model_cache, "cached_predictor", lambda job: _SlowPredictor(real(job), 0.1))
    monkeypatch.setattr(ProgressLine, "log_interval_s", 0.0)  # a line for every report
    block_shape = (8, 32, 32)
    (root / "job.yaml").write_text(yaml.safe_dump(job_doc(**{"compute.block_shape": list(block_shape)})))
    assert main(["run", str(root / "job.yaml"), "--data-root", str(root)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("steps ")]

    grid = WindowGrid.over_roi((14, 40, 44), PATCH, STRIDE, (0, 0, 0))
    plan = plan_blocks((14, 40, 44), (4, 16, 16), block_shape, grid)
    windows, chunks = plan.grid.count, sum(len(plan.border_chunks(b)) for b in plan.blocks())
    assert plan.n_blocks == 8 and chunks > 0
    total = windows + chunks
    figures = [_figures(line) for line in lines]
    assert lines[-1].startswith(f"steps {total}/{total} (100.0%)")
    assert figures[-1] == {"steps": (total, total), "windows": (windows, windows), "chunks": (chunks, chunks),
                           "blocks": (8, 8)}  # fmt: skip
    assert figures[0]["steps"] == (0, total)
    assert [f["steps"][0] for f in figures] == sorted(f["steps"][0] for f in figures)
    # Before any task ended, its windows were counted as they were computed: fewer than any block has.
    smallest = min(n for n in (len(list(plan.windows(b))) for b in plan.blocks()) if n > 0)
    assert any(0 < f["windows"][0] < smallest for f in figures), lines
    assert any(0 < f["chunks"][0] < chunks for f in figures), lines  # pass 2 counted as it went
    middle = lines[len(lines) // 2]
    assert "steps/s" in middle and "ETA" in middle  # a rate and time left from the first batches


def _figures(line: str) -> dict[str, tuple[int, int]]:
    """``{"steps": (12, 40), "windows": (8, 30), ...}`` from a progress line."""
    words = line.split()
    return {
        name: (int(value.split("/")[0]), int(value.split("/")[1]))
        for name, value in pairwise(words)
        if "/" in value and value.replace("/", "").isdigit()
    }
