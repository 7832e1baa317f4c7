"""pytc-worker's pure parts: which GPUs, and one pinned worker per GPU or N CPU workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workers.runtime.cli import (
    check_health,
    default_name,
    device_labels,
    main,
    memory_limit_per_worker,
    name_taken,
    parse_nvidia_smi,
    plan_workers,
    visible_gpus,
    write_health,
)


def test_gpus_flag_wins_over_the_environment() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, "0,2") == ["0", "2"]


def test_cuda_visible_devices_is_honoured() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}, None) == ["1", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, None) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, None) == []


def test_one_worker_per_gpu_pinned_to_it() -> None:
    specs = plan_workers("node", ["0", "2"], cpu_workers=1, cores=16, torch_threads=None)
    assert [s.name for s in specs] == ["node-gpu0", "node-gpu2"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "2"]
    assert all(s.env["PYTC_TORCH_THREADS"] == "8" for s in specs)


def test_cpu_workers_share_the_cores_and_see_no_gpu() -> None:
    specs = plan_workers("node", [], cpu_workers=2, cores=2, torch_threads=None)
    assert [s.name for s in specs] == ["node-cpu0", "node-cpu1"]
    assert all(s.env == {"CUDA_VISIBLE_DEVICES": "", "PYTC_TORCH_THREADS": "1"} for s in specs)


SMI = """\
GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H200 (UUID: GPU-66666666-7777-8888-9999-000000000000)
"""
SMI_MIG = """\
GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)
  MIG 3g.71gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
  MIG 3g.71gb     Device  1: (UUID: MIG-ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 1: NVIDIA H200 (UUID: GPU-66666666-7777-8888-9999-000000000000)
"""


def test_nvidia_smi_lists_gpu_indices() -> None:
    assert parse_nvidia_smi(SMI) == ["0", "1"]
    assert parse_nvidia_smi("") == []


def test_a_gpu_in_mig_mode_serves_one_worker_per_mig_slice() -> None:
    assert parse_nvidia_smi(SMI_MIG) == [
        "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "MIG-ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee",
        "1",
    ]
    specs = plan_workers("node", parse_nvidia_smi(SMI_MIG), cpu_workers=1, cores=8, torch_threads=2)
    # named after the device, so that a second pytc-worker serving the other slice takes other names
    assert [s.name for s in specs] == ["node-mig-aaaaaaaa", "node-mig-ffffffff", "node-gpu1"]
    assert specs[0].env == {
        "CUDA_VISIBLE_DEVICES": "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "PYTC_TORCH_THREADS": "2",
    }


def test_nvidia_smi_is_asked_only_when_nothing_else_says() -> None:
    def listing() -> str:
        return SMI

    assert visible_gpus({}, None, listing) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, None, listing) == ["1"]
    assert visible_gpus({}, "none", listing) == []
    assert visible_gpus({}, "", listing) == []
    assert visible_gpus({}, " 3 , 1 ", listing) == ["3", "1"]
    assert visible_gpus({}, None, lambda: "") == []


def test_each_worker_gets_an_equal_share_of_memory_unless_told() -> None:
    assert memory_limit_per_worker(None, 4) == 0.25
    assert memory_limit_per_worker("16GB", 4) == "16GB"
    assert memory_limit_per_worker("auto", 2) == "auto"


def _nanny(name: str, up: bool) -> Any:
    from distributed.core import Status

    status = Status.running if up else Status.closed
    return SimpleNamespace(name=name, status=Status.running, process=SimpleNamespace(status=status))


def test_the_health_file_says_whether_every_worker_is_up(tmp_path: Path) -> None:
    health = tmp_path / "health.json"
    assert check_health(health) == 1  # not written yet
    write_health(health, [_nanny("n-gpu0", True), _nanny("n-gpu1", True)])
    assert check_health(health) == 0
    write_health(health, [_nanny("n-gpu0", True), _nanny("n-gpu1", False)])
    assert check_health(health) == 1
    write_health(health, [_nanny("n-gpu0", True)])
    record = json.loads(health.read_text())
    health.write_text(json.dumps({**record, "time": time.time() - 600}))
    assert check_health(health) == 1  # the writer is gone or stuck


def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PYTC_SCHEDULER", raising=False)
    assert main([]) == 2
    assert "--scheduler" in capsys.readouterr().err
    assert main(["--scheduler", "tcp://127.0.0.1:1", "--cpu-workers", "0"]) == 2
    assert main(["--check-health", "/nonexistent/health.json"]) == 1


def test_torch_threads_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.runtime.cli import build_parser

    monkeypatch.setenv("PYTC_TORCH_THREADS", "3")
    assert build_parser().parse_args([]).nthreads_torch == 3
    monkeypatch.delenv("PYTC_TORCH_THREADS")
    assert build_parser().parse_args([]).nthreads_torch is None


def test_cpu_cores_are_split_into_one_share_per_worker() -> None:
    from workers.runtime.affinity import parse_cores, split_cores

    assert parse_cores("0-3, 8,10-11,3") == [0, 1, 2, 3, 8, 10, 11]
    assert split_cores([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    allowed = sorted(os.sched_getaffinity(0))
    (one,) = plan_workers("node", [], cpu_workers=1, cores=16, torch_threads=None, cpu_cores=allowed)
    assert one.env["PYTC_CPU_CORES"] == ",".join(map(str, allowed))
    assert one.env["PYTC_TORCH_THREADS"] == str(len(allowed))
    gpu = plan_workers("node", ["0"], cpu_workers=1, cores=16, torch_threads=3, cpu_cores=allowed[:1])
    assert gpu[0].env["PYTC_CPU_CORES"] == str(allowed[0]) and gpu[0].env["PYTC_TORCH_THREADS"] == "3"
    assert "PYTC_CPU_CORES" not in plan_workers("n", [], cpu_workers=1, cores=2, torch_threads=None)[0].env


@pytest.mark.parametrize(
    ("text", "words"),
    [("a-b", "not a core number"), ("3-1", "not a valid range"), ("", "no cores"), ("0", "for 2 workers")],
)
def test_bad_core_lists_exit_2_naming_the_flag(
    text: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["--scheduler", "tcp://127.0.0.1:1", "--cpu-workers", "2", "--gpus", "none", "--cpu-cores", text]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--cpu-cores" in err and words in err


def test_cores_this_process_may_not_use_are_refused() -> None:
    from workers.runtime.affinity import CoreListError, check_available

    with pytest.raises(CoreListError, match="not available"):
        check_available([0, 100000])
    with pytest.raises(CoreListError, match="not available"):
        plan_workers("node", [], cpu_workers=1, cores=2, torch_threads=None, cpu_cores=[100000])


def test_device_labels_name_the_device_and_stay_unique() -> None:
    assert device_labels(["2", "0"]) == ["gpu2", "gpu0"]
    assert device_labels(["GPU-66666666-7777-8888-9999-000000000000"]) == ["gpu-66666666"]
    # old-style MIG ids share their first characters: then the whole id
    assert device_labels(["MIG-GPU-1234abcd/1/0", "MIG-GPU-1234abcd/2/0"]) == [
        "mig-gpu-1234abcd-1-0",
        "mig-gpu-1234abcd-2-0",
    ]
    assert device_labels(["0", "0"]) == ["gpu0-0", "gpu0-1"]  # two workers on one GPU


def test_the_default_name_prefix_is_the_host_and_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_name() == f"{os.uname().nodename}-{os.getpid()}"
    captured: dict[str, Any] = {}

    class Planned(Exception):
        """Stops main once the workers are planned, before it changes Dask's settings or starts any."""

    def plan(name: str, *args: Any, **kwargs: Any) -> list[Any]:
        captured["name"] = name
        raise Planned

    monkeypatch.setattr("workers.runtime.cli.plan_workers", plan)
    with pytest.raises(Planned):
        main(["--scheduler", "tcp://127.0.0.1:1", "--gpus", "none"])
    assert captured["name"] == default_name()
    with pytest.raises(Planned):
        main(["--scheduler", "tcp://127.0.0.1:1", "--gpus", "none", "--name", "mine"])
    assert captured["name"] == "mine"


def test_a_name_taken_is_found_deep_in_the_causes() -> None:
    reply = {"status": "error", "message": "name taken, node-cpu0", "time": 1.0}
    try:
        try:
            try:
                raise ValueError(f"Unexpected response from register: {reply!r}")
            except ValueError as cause:
                raise RuntimeError("Worker failed to start.") from cause
        except RuntimeError as cause:
            raise RuntimeError("Nanny failed to start.") from cause
    except RuntimeError as err:
        assert name_taken(err) == "node-cpu0"
    assert name_taken(RuntimeError("Worker failed to start.")) is None


def test_help_is_plain_text_with_the_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":mod:" not in out  # no reStructuredText
    assert "exit codes:" in out and "--name" in out and "(default: HOST-PID" in out
    assert "(default: 120)" in out and "(default: 4)" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from workers.version import package_version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pytc-service {package_version()}\n"
