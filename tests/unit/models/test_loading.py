"""load_model for TorchScript, torch.export and built-in architectures; identities by sha256."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import save_checkpoint
from models.errors import ArchitectureMismatchError, CheckpointError, ModelConfigError, ModelNotFoundError
from models.loading import file_sha256, load_model
from models.ref import ModelRef
from models.unet3d import UNet3D

SMALL_CONFIG = (("filters", (4, 6, 8)), ("isotropy", (False, False, True)), ("out_channels", 2))


class _Tiny(nn.Module):
    """Two input channels, three output channels, any spatial size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.norm = nn.BatchNorm3d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.norm(self.conv(x)))


class _Declares(nn.Module):
    """No parameters to guess from, but an ``in_channels`` attribute (kept by scripting)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] * 2.0


def _tiny() -> _Tiny:
    torch.manual_seed(0)
    return _Tiny().eval()


def _save_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.12 deprecates torch.jit
        torch.jit.trace(module, example, check_trace=False).save(str(path))


def test_file_sha256_is_the_file_hash_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest() == file_sha256(str(path))
    with pytest.raises(ModelNotFoundError, match="missing"):
        file_sha256(tmp_path / "missing")


def test_torchscript_round_trip(tmp_path: Path) -> None:
    model, x = _tiny(), torch.rand(1, 2, 3, 8, 8)
    path = tmp_path / "net.pt"
    _save_torchscript(model, x, path)
    loaded = load_model(ModelRef(kind="torchscript", path=str(path)), probe_shape=(3, 9, 9))
    assert (loaded.in_channels, loaded.out_channels) == (2, 3)  # in from the first conv's weight
    assert loaded.sha256 == file_sha256(path) and str(path) in loaded.description
    assert not loaded.module.training and loaded.fixed_input_shape is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_torchscript_exposing_in_channels(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Declares()).save(str(path))
    loaded = load_model(ModelRef(kind="torchscript", path=str(path)), probe_shape=(1, 4, 4))
    assert (loaded.in_channels, loaded.out_channels) == (4, 2)


def test_exported_round_trip_static_shape(tmp_path: Path) -> None:
    model, x = _tiny(), torch.rand(2, 2, 3, 8, 8)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(ModelRef(kind="exported", path=str(path)), probe_shape=(17, 129, 129))
    # A static program accepts only its traced shape; the probe uses it and reports it.
    assert loaded.fixed_input_shape == (2, 2, 3, 8, 8)
    assert (loaded.in_channels, loaded.out_channels) == (2, 3)
    assert loaded.sha256 == file_sha256(path)
    # Workers treat every model alike; torch's exported modules would refuse eval() by themselves.
    assert loaded.module.to("cpu").eval() is loaded.module
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_exported_round_trip_dynamic_shape(tmp_path: Path) -> None:
    model, x = _tiny(), torch.rand(2, 2, 3, 8, 8)  # a sample size of 1 would be specialised
    auto = torch.export.Dim.AUTO
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: auto, 2: auto, 3: auto, 4: auto}})
    path = tmp_path / "dyn.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(ModelRef(kind="exported", path=str(path)), probe_shape=(5, 9, 9))
    assert loaded.fixed_input_shape is None and (loaded.in_channels, loaded.out_channels) == (2, 3)
    other = torch.rand(3, 2, 5, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(other), model(other))


def test_exported_unet3d(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = UNet3D(filters=(4, 6, 8), isotropy=(False, False, True)).eval(), torch.rand(1, 1, 5, 17, 17)
    path = tmp_path / "unet.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(ModelRef(kind="exported", path=str(path)))
    assert (loaded.in_channels, loaded.out_channels) == (1, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_architecture_without_checkpoint_is_deterministic() -> None:
    ref = ModelRef(kind="architecture", architecture="unet3d", config=SMALL_CONFIG)
    rng = torch.get_rng_state()
    first, second = load_model(ref), load_model(ref)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert (first.in_channels, first.out_channels) == (1, 2) and not first.module.training
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = ModelRef(kind="architecture", architecture="unet3d", config=(*SMALL_CONFIG, ("act_mode", "relu")))
    assert load_model(other).sha256 != first.sha256


def test_architecture_with_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(5)
    trained = UNet3D(out_channel=2, filters=(4, 6, 8), isotropy=(False, False, True))
    path = tmp_path / "checkpoint_00005.pth.tar"
    save_checkpoint(path, {"state_dict": trained, "iteration": 5, "optimizer": {}, "lr_scheduler": {}})
    ref = ModelRef(kind="architecture", architecture="unet3d", config=SMALL_CONFIG, checkpoint=str(path))
    loaded = load_model(ref)
    assert loaded.sha256 == file_sha256(path) and str(path) in loaded.description
    x = torch.rand(1, 1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained.eval()(x))


def test_architecture_checkpoint_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"state_dict": UNet3D(filters=(4, 6, 8), isotropy=(False, False, True))})
    ref = ModelRef(kind="architecture", architecture="unet3d", config=SMALL_CONFIG, checkpoint=str(path))
    with pytest.raises(ArchitectureMismatchError, match=r"conv_out\.0\.weight"):
        load_model(ref)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    for kind in ("torchscript", "exported"):
        with pytest.raises(ModelNotFoundError, match=r"nope\.pt"):
            load_model(ModelRef(kind=kind, path=str(tmp_path / "nope.pt")))  # type: ignore[arg-type]
        junk = tmp_path / f"{kind}.pt"
        junk.write_bytes(b"garbage" * 50)
        with pytest.raises(CheckpointError, match=kind):
            load_model(ModelRef(kind=kind, path=str(junk)))  # type: ignore[arg-type]
    ref = ModelRef(kind="architecture", architecture="unet3d", checkpoint=str(tmp_path / "gone.pth"))
    with pytest.raises(ModelNotFoundError, match=r"gone\.pth"):
        load_model(ref)


def test_bad_references() -> None:
    with pytest.raises(ModelConfigError, match="needs 'path'"):
        load_model(ModelRef(kind="torchscript"))
    with pytest.raises(ModelConfigError, match="unknown architecture 'vnet'"):
        load_model(ModelRef(kind="architecture", architecture="vnet"))
    with pytest.raises(ModelConfigError, match="kernel"):
        load_model(ModelRef(kind="architecture", architecture="unet3d", config=(("kernel", 3),)))


def test_model_that_cannot_run_on_the_probe(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv3d(2, 3, kernel_size=(3, 3, 3))).eval()
    path = tmp_path / "net.pt"
    _save_torchscript(model, torch.rand(1, 2, 3, 3, 3), path)
    with pytest.raises(ModelConfigError, match=r"net\.pt"):
        load_model(ModelRef(kind="torchscript", path=str(path)), probe_shape=(1, 2, 2))


def test_models_never_import_workers() -> None:
    code = "import sys, models.loading; sys.exit('workers' in sys.modules or 'service' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
