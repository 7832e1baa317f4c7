"""constraints.txt, the lock the Docker image installs with: every runtime dependency pinned once,
inside the range pyproject.toml declares; the Dockerfile installs torch and the package with it;
``make lock`` (deploy/lock.py) writes the runtime closure of this environment and nothing the tests
alone need. Caps in pyproject.toml say why they are there."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def read_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt: {line!r} is not one exact pin (name==version)"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return read_lock((ROOT / "constraints.txt").read_text())


@pytest.fixture(scope="module")
def dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def test_every_dependency_is_locked_inside_its_declared_range(
    lock: dict[str, str], dependencies: list[Requirement]
) -> None:
    for req in dependencies:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"constraints.txt {name}=={lock[name]}: {req}"
        )
    assert "distributed" in lock  # extras are followed: dask[distributed]


def test_torch_is_locked_without_a_build_label(lock: dict[str, str]) -> None:
    # The image takes torch from the CPU or a CUDA index; `==2.13.0` matches 2.13.0+cpu and +cu128.
    assert Version(lock["torch"]).local is None


def test_the_dockerfile_installs_torch_and_the_package_with_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copy_lock = dockerfile.index("COPY constraints.txt ")
    torch = re.search(r"^RUN pip install --index-url \$\{TORCH_INDEX\} (.+)$", dockerfile, re.M)
    assert torch and torch[1] == "\"$(grep -E '^torch==' constraints.txt)\"", torch
    package = re.search(r"^RUN pip install -c constraints\.txt \. ", dockerfile, re.M)
    assert package and copy_lock < torch.start() < package.start()
    assert len(re.findall(r"pip install", dockerfile)) == 2  # nothing installed around the lock


def test_a_cap_says_why_beside_it() -> None:
    block = (ROOT / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]\n", 1)[0]
    for line in block.splitlines():
        spec = line.split("#", 1)[0]
        if "<" in spec:
            assert "#" in line, f"pyproject.toml: {line.strip()} caps a version without saying why"


def test_make_lock_writes_the_runtime_closure_and_nothing_test_only(tmp_path: Path) -> None:
    out = tmp_path / "constraints.txt"
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "lock.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    pins = read_lock(out.read_text())
    assert done.stdout.strip() == f"{out}: {len(pins)} packages pinned"
    assert {"fastapi", "starlette", "pydantic-core", "distributed", "bokeh", "torch"} <= set(pins)
    assert not {"pytest", "hypothesis", "mypy", "ruff", "monai", "schemathesis", "pytc-service"} & set(pins)
    assert pins["fastapi"] == version("fastapi") and pins["torch"] == Version(version("torch")).public


def test_the_readme_names_each_floor(dependencies: list[Requirement]) -> None:
    section = (ROOT / "README.md").read_text().split("\n## Installing\n", 1)[1].split("\n## ", 1)[0]
    words = " ".join(section.split())
    for req in dependencies:
        (floor,) = [spec.version for spec in req.specifier if spec.operator == ">="]
        assert f"{req.name} {floor}" in words, f"README's Installing section lacks {req.name} {floor}"
