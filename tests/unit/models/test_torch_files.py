"""Telling a file torch wrote from its bytes, without torch: what the control plane refuses at once."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from models import torch_files
from models.torch_files import max_model_bytes, torch_file_problem


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


def _zip_of_zeros(path: Path, declared: int, members: int = 1) -> Path:
    """A deflated zip whose members hold ``declared`` zero bytes in all, written in 1 MiB pieces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for m in range(members):
            left = declared // members
            with archive.open(f"archive/data/{m}", "w", force_zip64=True) as member:
                while left:
                    member.write(bytes(min(left, 2**20)))
                    left -= min(left, 2**20)
    return path


def test_a_zip_bomb_is_refused_from_its_directory_before_torch_reads_it(tmp_path: Path) -> None:
    bomb = _zip_of_zeros(tmp_path / "bomb.pt", 80 * 2**20)  # 80 MiB of zeros in about 80 KB
    assert bomb.stat().st_size < 200_000
    problem = torch_file_problem(bomb)
    assert problem is not None and "declare 83,886,080 bytes, more than 100 times its size" in problem, (
        problem
    )
    # bounded by the most a model may take, too (PYTC_MAX_MODEL_BYTES)
    small = _zip_of_zeros(tmp_path / "small.pt", 2 * 2**20)
    problem = torch_file_problem(small, max_bytes=2**20)
    assert (
        problem is not None and "declare 2,097,152 bytes, more than the 1,048,576 a model may take" in problem
    )
    assert "PYTC_MAX_MODEL_BYTES" in problem
    assert torch_file_problem(small) is None  # 2 MiB declared: under the default, under the ratio floor


def test_files_torch_wrote_pass_the_bounds_down_to_their_own_size(tmp_path: Path) -> None:
    for name, path in _saved(tmp_path).items():
        size = path.stat().st_size
        assert torch_file_problem(path, max_bytes=2 * size) is None, name
    legacy = _saved(tmp_path)["legacy.pth"]
    problem = torch_file_problem(legacy, max_bytes=legacy.stat().st_size - 1)
    assert problem is not None and problem.startswith(f"is {legacy.stat().st_size:,} bytes, more than"), (
        problem
    )


def test_an_archive_of_too_many_members_is_refused_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_files, "MAX_MEMBERS", 10)
    problem = torch_file_problem(_zip_of_zeros(tmp_path / "many.pt", 11, members=11))
    assert problem is not None and "of 11 members, more than a model holds (10)" in problem, problem
    assert torch_file_problem(_zip_of_zeros(tmp_path / "ten.pt", 10, members=10)) is None


def test_the_bound_is_read_from_the_environment() -> None:
    assert max_model_bytes({}) == 4 * 2**30
    assert max_model_bytes({"PYTC_MAX_MODEL_BYTES": "123456"}) == 123456
    assert max_model_bytes({"PYTC_MAX_MODEL_BYTES": "512MiB"}) == 512 * 2**20
    assert max_model_bytes({"PYTC_MAX_MODEL_BYTES": "1.5 GB"}) == 1_500_000_000
    for bad in ("lots", "-1", "0"):
        with pytest.raises(ValueError, match="PYTC_MAX_MODEL_BYTES"):
            max_model_bytes({"PYTC_MAX_MODEL_BYTES": bad})
