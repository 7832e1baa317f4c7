"""pytc-worker's pure parts: which GPUs, and one pinned worker per GPU or N CPU workers."""

from __future__ import annotations

from workers.cli import plan_workers, visible_gpus


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
