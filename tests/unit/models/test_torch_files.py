"""Telling a file torch wrote from its bytes, without torch: what the control plane refuses at once."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import torch

from models.torch_files import torch_file_problem


def _saved(folder: Path) -> dict[str, Path]:
    files = {name: folder / name for name in ("zip.pth", "legacy.pth", "script.pt")}
    torch.save({"state_dict": {"w": torch.ones(3)}}, files["zip.pth"])
    torch.save({"w": torch.ones(3)}, files["legacy.pth"], _use_new_zipfile_serialization=False)
    torch.jit.script(torch.nn.Conv3d(1, 1, 1)).save(str(files["script.pt"]))
    return files


def test_files_torch_wrote_pass(tmp_path: Path) -> None:
    for name, path in _saved(tmp_path).items():
        assert torch_file_problem(path) is None, name


def test_empty_foreign_and_cut_files_are_named_for_what_they_are(tmp_path: Path) -> None:
    files = _saved(tmp_path)
    cases = {
        "empty": (b"", "is empty"),
        "text": (b"state_dict = {}\n", "is not a file torch wrote"),
        "pickle0": (pickle.dumps({"a": 1}, protocol=0), "is not a file torch wrote"),
        "cut_zip": (files["zip.pth"].read_bytes()[:300], "truncated"),
        "cut_script": (files["script.pt"].read_bytes()[:-30], "truncated"),
    }
    for name, (data, says) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        problem = torch_file_problem(path)
        assert problem is not None and says in problem and "copy or save it again" in problem, (name, problem)


def test_an_unreadable_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    problem = torch_file_problem(tmp_path / "nothing.pth")
    assert problem is not None and problem.startswith("cannot be read")


def test_it_needs_no_torch() -> None:
    """The control plane calls it, and never imports torch."""
    code = "import sys, models.torch_files; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
