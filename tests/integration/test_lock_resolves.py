"""constraints.txt is complete and consistent: installing the package afresh with it (as the Docker
image does) resolves to exactly the locked versions, with nothing left unlocked. pip resolves
without installing (``--dry-run``), from its cache and the package index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.integration.test_dependency_floors import ROOT, copy_project
from tests.unit.deploy.test_constraints import read_lock


@pytest.mark.slow
def test_a_fresh_install_with_the_lock_takes_exactly_the_locked_versions(tmp_path: Path) -> None:
    source, report = copy_project(tmp_path / "src"), tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"]
    command += ["--report", str(report), "-c", str(ROOT / "constraints.txt"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resolved = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"]).public
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved.pop("pytc-service", None) is not None
    lock = {
        name: Version(pin).public for name, pin in read_lock((ROOT / "constraints.txt").read_text()).items()
    }
    assert resolved == lock
