"""Checkpoints: atomic save, weights_only load that never runs code, strict weight loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import (
    CHECKPOINT_SCHEMA_VERSION,
    extract_state_dict,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from models.errors import ArchitectureMismatchError, CheckpointError, ModelError, ModelNotFoundError
from models.unet3d import UNet3D

SMALL = (4, 6, 8, 10, 12)


def _small(filters: tuple[int, ...] = SMALL, seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(filters=filters)


class _Marker:
    """Unpickling this calls ``open(path, "w")``: the file appearing means code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_round_trip_pytc_layout(tmp_path: Path) -> None:
    model = _small()
    path = tmp_path / "runs" / "checkpoint_00010.pth.tar"
    save_checkpoint(path, {"state_dict": model, "iteration": 10, "optimizer": {}, "lr_scheduler": {}})
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 10 and ckpt["schema_version"] == CHECKPOINT_SCHEMA_VERSION
    state = extract_state_dict(ckpt, path)
    assert state.keys() == model.state_dict().keys()
    other = _small(seed=1)
    load_weights(other, state, path)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_save_unwraps_data_parallel(tmp_path: Path) -> None:
    model = _small()
    save_checkpoint(tmp_path / "c.pth", {"state_dict": nn.DataParallel(model)})
    keys = list(load_checkpoint(tmp_path / "c.pth")["state_dict"])
    assert keys == list(model.state_dict())


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"iteration": 1})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(path, {"iteration": 2, "bad": lambda: None})
    assert load_checkpoint(path)["iteration"] == 1
    assert os.listdir(tmp_path) == ["c.pth"]


@pytest.mark.parametrize("via_torch_save", [True, False])
def test_malicious_pickle_is_not_executed(tmp_path: Path, via_torch_save: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    payload = {"state_dict": {}, "x": _Marker(marker)}
    if via_torch_save:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.pth\.tar"):
        load_checkpoint(path)
    assert not marker.exists()


def test_marker_payload_is_live(tmp_path: Path) -> None:
    # The payload above really would run code with a plain unpickler; the test is not vacuous.
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(_Marker(marker))).close()
    assert marker.exists()


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        load_checkpoint(junk)
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"state_dict": _small()})
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut\.pth") as info:
        load_checkpoint(cut)
    assert info.value.__cause__ is not None


def test_missing_file_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nothing\.pth") as info:
        load_checkpoint(tmp_path / "nothing.pth")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ModelError)
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "tensor.pth")


def test_extract_state_dict_layouts() -> None:
    state = {"a.weight": torch.zeros(2), "b.bias": torch.ones(1)}
    assert extract_state_dict({"state_dict": state, "iteration": 5}) == state
    assert extract_state_dict(state) == state
    wrapped = {f"module.{k}": v for k, v in state.items()}
    assert extract_state_dict({"state_dict": wrapped}) == state
    compiled = {f"module._orig_mod.{k}": v for k, v in state.items()}
    assert extract_state_dict(compiled) == state
    # Only a prefix that every key carries is a wrapper's; otherwise the names are left alone.
    partial = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert extract_state_dict(partial).keys() == partial.keys()


def test_extract_state_dict_rejects_non_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no state_dict"):
        extract_state_dict({"model": 3}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="no state_dict"):
        extract_state_dict({"state_dict": 3})
    with pytest.raises(CheckpointError, match="not tensors"):
        extract_state_dict({"state_dict": {"a": torch.zeros(1), "b": 3}})


def test_shape_mismatch_names_the_layer() -> None:
    model = _small()
    state = dict(model.state_dict())
    state["conv_out.0.weight"] = torch.zeros(5, 4, 1, 5, 5)
    before = model.conv_in[0].weight.detach().clone()
    state["conv_in.0.weight"] = torch.zeros_like(before)
    with pytest.raises(ArchitectureMismatchError, match=r"conv_out\.0\.weight") as info:
        load_weights(model, state, "/ckpt/x.pth")
    message = str(info.value)
    assert "expected (3, 4, 1, 5, 5), found (5, 4, 1, 5, 5)" in message and "/ckpt/x.pth" in message
    assert info.value.mismatched == ("conv_out.0.weight",)
    assert torch.equal(model.conv_in[0].weight, before)  # nothing was loaded


def test_missing_and_unexpected_keys_are_listed() -> None:
    model = _small()
    state = dict(model.state_dict())
    del state["up_layers.0.1.conv.1.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ArchitectureMismatchError) as info:
        load_weights(model, state)
    assert info.value.missing == ("up_layers.0.1.conv.1.0.weight",)
    assert info.value.unexpected == ("extra.weight",)
    assert "not in checkpoint" in str(info.value) and "not in model" in str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)


def test_other_architecture_lists_layers(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    save_checkpoint(path, {"state_dict": _small((8, 12, 16, 20, 24))})
    with pytest.raises(ArchitectureMismatchError, match=r"wide\.pth") as info:
        load_weights(_small(), extract_state_dict(load_checkpoint(path)), path)
    assert "conv_in.0.weight: expected (4, 1, 1, 5, 5), found (8, 1, 1, 5, 5)" in str(info.value)
    assert "more" in str(info.value)  # long lists are cut, the counts are in the summary line
    shallow = UNet3D(filters=(4, 6, 8), isotropy=(False, False, True))  # fewer stages
    with pytest.raises(ArchitectureMismatchError) as info:
        load_weights(shallow, extract_state_dict(load_checkpoint(path)), path)
    assert info.value.unexpected


def test_old_checkpoints_without_num_batches_tracked_load() -> None:
    model = _small()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(_small(seed=2), state)


def test_mismatch_error_survives_pickling() -> None:
    error = ArchitectureMismatchError("msg", missing=["a"], unexpected=["b"], mismatched=["c"])
    clone = pickle.loads(pickle.dumps(error))
    assert (str(clone), clone.missing, clone.unexpected, clone.mismatched) == ("msg", ("a",), ("b",), ("c",))


class _Custom:
    """A class of the test's own: a checkpoint holding one would run code when unpickled."""

    def __init__(self) -> None:
        self.value = 1


def _failing_files(folder: Path) -> dict[str, Path]:
    """Every way we can make a checkpoint fail to load, one file each."""
    good = folder / "good.pth"
    save_checkpoint(good, {"state_dict": _small()})
    legacy = folder / "legacy.pth"
    torch.save({"state_dict": _small().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    contents: dict[str, bytes] = {
        "junk": b"\x00not a checkpoint" * 10,
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated_zip": good.read_bytes()[:2000],
        "truncated_legacy": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "plain_pickle": pickle.dumps({"state_dict": {}}, protocol=4),
    }
    files = {name: folder / f"{name}.pth" for name in contents}
    for name, data in contents.items():
        files[name].write_bytes(data)
    files["custom_class"] = folder / "custom_class.pth"
    torch.save({"state_dict": _Custom()}, files["custom_class"])
    files["code"] = folder / "code.pth"
    torch.save({"state_dict": {}, "x": _Marker(folder / "pwned")}, files["code"])
    files["whole_module"] = folder / "whole_module.pth"
    torch.save(_small(), files["whole_module"])
    return files


def test_no_failure_invites_loading_with_the_safety_off(tmp_path: Path) -> None:
    """Whatever is wrong with the file, the message names it and never repeats torch's advice to
    load it with ``weights_only=False`` (nor to allowlist its classes)."""
    for name, path in _failing_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message, (name, message)
        for unsafe in (
            "weights_only=False",
            "weights_only` set to `False",
            "add_safe_globals",
            "safe_globals",
        ):
            assert unsafe not in message, (name, message)
        assert "\n" not in message and "\x1b" not in message, (name, message)  # one plain line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("name", "names"),
    [("custom_class", "_Custom"), ("code", "io.open"), ("whole_module", "UNet3D")],
)
def test_a_file_holding_objects_names_the_global_and_the_safe_way_out(
    tmp_path: Path, name: str, names: str
) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_failing_files(tmp_path)[name])
    message = str(info.value)
    assert names in message and "could run code" in message, message
    assert 'torch.save({"state_dict": model.state_dict()}, path)' in message, message


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("junk", "is not a file torch wrote"),
        ("random", "is not a file torch wrote"),
        ("empty", "is empty"),
        ("truncated_zip", "truncated"),
        ("truncated_legacy", "truncated"),
    ],
)
def test_a_damaged_file_is_called_damaged(tmp_path: Path, name: str, says: str) -> None:
    with pytest.raises(CheckpointError, match=says) as info:
        load_checkpoint(_failing_files(tmp_path)[name])
    assert "copy or save it again" in str(info.value)
