"""Imports run one way: volumes <- models <- workers <- service. Each package is imported in a fresh
interpreter and must not bring along what it may not depend on."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = {
    "volumes": ["torch", "models", "workers", "service", "distributed", "fastapi"],
    "models": ["workers", "service", "distributed", "fastapi"],
    "workers": ["service", "fastapi"],
    "service": ["torch"],
}
MODULES = {
    "volumes": [
        "volumes.box",
        "volumes.windows",
        "volumes.blocks",
        "volumes.blending",
        "volumes.volume",
        "volumes.padding",
        "volumes.output",
        "volumes.synth",
        "volumes.sampling",
        "volumes.augment",
        "volumes.tiles",
        "volumes.chunk_cache",
    ],
    "models": [
        "models.unet3d",
        "models.checkpoint",
        "models.loading",
        "models.training",
        "models.training_config",
        "models.targets",
        "models.losses",
        "models.optim",
        "models.trainer",
    ],
    "workers": [
        "workers.tasks",
        "workers.engine",
        "workers.geometry",
        "workers.rundir",
        "workers.training_task",
        "workers.training_session",
        "workers.training_setup",
        "workers.training_data",
        "workers.training_eval",
        "workers.readahead",
        "workers.allocator",
        "workers.affinity",
    ],
    "service": [
        "service.cli",
        "service.runner",
        "service.spec",
        "service.validation",
        "service.training_spec",
        "service.training_validation",
        "service.training_runner",
        "service.training_progress",
        "service.cli_training",
        "service.model_file_registry",
        "service.entry",
        "service.app",
        "service.jobs",
        "service.dask_connection",
        "service.training_jobs",
    ],
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_forbidden(package: str) -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES[package]!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {FORBIDDEN[package]!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{package} imported {result.stdout.strip()}"


def test_what_the_control_plane_takes_from_training_imports_no_torch() -> None:
    """The service names the training task and reads its records; none of that may bring torch."""
    code = (
        "import sys\n"
        "import models.training_config, workers.training_job, workers.training_dir, workers.training_task\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
