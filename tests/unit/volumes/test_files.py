"""Small durable files: atomic replacement, shared mode, JSON read back or reported broken."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

import pytest

from volumes.errors import VolumeFormatError
from volumes.files import atomic_write, read_json, read_json_object, sync_folder, write_json_atomic


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_json_atomic(target, {"n": 1})

    def half(handle: IO[bytes]) -> None:
        handle.write(b'{"n": 2')
        raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError, match="died"):
        atomic_write(target, half)
    assert read_json(target) == {"n": 1}
    assert os.listdir(tmp_path) == ["record.json"]
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.bin", half)
    assert os.listdir(tmp_path) == ["record.json"]  # nothing half-written under either name


def test_files_are_shared_0644_and_folders_are_made(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "data.bin"
    atomic_write(target, lambda h: h.write(b"\x00\x01"), durable=True)
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    sync_folder(tmp_path / "no such folder")  # best effort: nothing to sync, no error


def test_json_round_trip_is_stable(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"b": [1, 2], "a": None})
    write_json_atomic(tmp_path / "b.json", {"a": None, "b": [1, 2]})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert read_json(tmp_path / "a.json") == {"a": None, "b": [1, 2]}
    write_json_atomic(tmp_path / "list.json", [3, 1])
    assert read_json(tmp_path / "list.json") == [3, 1]  # any JSON value


def test_missing_is_none_and_broken_is_an_error_naming_the_file(tmp_path: Path) -> None:
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(tmp_path / "missing" / "below.json") is None
    (tmp_path / "broken.json").write_text('{"n": ')
    with pytest.raises(VolumeFormatError, match=r"broken\.json is not valid JSON") as info:
        read_json(tmp_path / "broken.json")
    assert isinstance(info.value, ValueError)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(VolumeFormatError, match=r"binary\.json"):
        read_json(tmp_path / "binary.json")


def test_read_json_object_refuses_other_values(tmp_path: Path) -> None:
    assert read_json_object(tmp_path / "missing.json") is None
    write_json_atomic(tmp_path / "obj.json", {"a": 1})
    assert read_json_object(tmp_path / "obj.json") == {"a": 1}
    write_json_atomic(tmp_path / "list.json", [1])
    with pytest.raises(VolumeFormatError, match=r"list\.json holds a JSON list, expected an object"):
        read_json_object(tmp_path / "list.json")
