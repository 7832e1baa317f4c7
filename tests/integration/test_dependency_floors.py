"""The floors in pyproject.toml hold: a fresh virtual environment with every dependency at the lowest
version the project declares imports the packages, serves its API pages and runs an inference job
through ``pytc run``, with the same result as the versions installed here.

torch is the one exception: it is pinned to the torch installed here (another torch is a download
of gigabytes). pip's cache is used, so only the first run on a machine downloads the floors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.cli import main
from volumes.box import Box
from volumes.open import open_volume

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]

CHECK_APP = textwrap.dedent(
    """
    import re
    import volumes, models, workers, service.http.app, service.cli
    from fastapi.testclient import TestClient
    from service.http.app import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings(data_roots=["."], state_dir=".pytc")))  # no lifespan: no Dask
    for path in ("/openapi.json", "/docs", "/redoc"):
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', answer.text):  # served by the app
            assert client.get(asset).status_code == 200, (path, asset)
    print("app ok")
    """
)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def floor_pins(requirements: list[str]) -> list[str]:
    """``name[extras]==floor`` for every requirement, torch pinned to the torch installed here."""
    pins = []
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) == "torch":
            pins.append(f"torch=={version('torch')}")
            continue
        floors = [spec.version for spec in req.specifier if spec.operator == ">="]
        assert len(floors) == 1, f"{text!r}: a dependency needs exactly one floor (>=) to be tested"
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pins.append(f"{req.name}{extras}=={floors[0]}")
    return pins


def copy_project(dest: Path) -> Path:
    """What the wheel is built from, outside the working tree (a build writes build/ beside it)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_in(venv: Path, args: list[str], cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_each_dependency_is_pinned_to_its_floor_and_torch_to_the_installed_one() -> None:
    assert floor_pins(["dask[distributed]>=2025.4", "zarr>=3.0.8,<9", "torch>=2.10"]) == [
        "dask[distributed]==2025.4",
        "zarr==3.0.8",
        f"torch=={version('torch')}",
    ]
    with pytest.raises(AssertionError, match="exactly one floor"):
        floor_pins(["zarr<4"])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(floor_pins(deps)) == len(deps)  # every declared dependency has its floor


@pytest.mark.slow
def test_the_declared_floors_install_import_and_run_a_job(tmp_path: Path) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    source = copy_project(tmp_path / "src")
    # --no-compile: bytecode is written as modules are imported (torch installs in 15 s, not 40).
    install = [python, "-m", "pip", "install", "-q", "--no-compile", str(source), *floor_pins(deps)]
    run_in(venv, install, work, timeout=900)
    assert run_in(venv, [python, "-c", CHECK_APP], work).strip().endswith("app ok")
    torch.jit.script(TinyNet().eval()).save(str(work / "net.pt"))
    run_in(venv, [str(venv / "bin" / "pytc"), "synth", "em.zarr", "--shape", "16", "64", "64"], work)
    job = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [5, 17, 17], "stride": [3, 9, 9]},
        "output": {"path": "floors.zarr", "dataset": "pred", "chunks": [8, 32, 32]},
        "compute": {"block_shape": [8, 32, 32]},
    }
    (work / "floors.yaml").write_text(yaml.safe_dump(job))
    run_in(venv, [str(venv / "bin" / "pytc"), "run", "floors.yaml", "--quiet"], work)

    job["output"]["path"] = "here.zarr"  # the same job with the versions installed here
    (work / "here.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(work / "here.yaml"), "--data-root", str(work), "--quiet"]) == 0
    floors, here = (open_volume(work / name, "pred") for name in ("floors.zarr", "here.zarr"))
    assert floors.attrs["pytc"]["complete"] is True
    assert floors.shape == here.shape == (1, 16, 64, 64)
    box = Box.of_shape(here.shape)
    np.testing.assert_allclose(floors.read(box), here.read(box), rtol=1e-5, atol=1e-6)
