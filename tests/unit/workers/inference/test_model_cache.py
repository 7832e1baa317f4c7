"""The model cache: loaded models in the worker's state, keyed by the model file's sha256, the device
and the memory format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import workers.inference.model_cache as model_cache
import workers.runtime.state as worker_state
from models.ref import ModelRef
from workers.runtime.state import PLUGIN_NAME, WorkerState

PATCH = (3, 8, 8)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> WorkerState:
    state = WorkerState(max_models=2)
    monkeypatch.setattr(worker_state, "_PROCESS_STATE", state)
    return state


def save_net(path: Path, out_channels: int) -> ModelRef:
    torch.jit.script(torch.nn.Conv3d(1, out_channels, 3, padding=1).eval()).save(str(path))
    return ModelRef(kind="torchscript", path=str(path))


def test_the_plugin_travels_pickled_without_what_it_holds() -> None:
    plugin = WorkerState(max_models=3)
    plugin.models.put("key", object())
    plugin.geometries.put("layout", object())
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.name == PLUGIN_NAME and copy.max_models == 3
    assert len(copy.models) == 0 and copy.models.max_entries == 3 and len(copy.geometries) == 0


def test_a_model_is_loaded_once_and_kept_by_the_fallback_cache(
    tmp_path: Path, fresh_cache: WorkerState
) -> None:
    ref = save_net(tmp_path / "net.pt", 2)
    first = model_cache.cached_model(ref, PATCH)
    assert model_cache.cached_model(ref, PATCH) is first
    assert first.out_channels == 2 and len(fresh_cache.models) == 1
    assert worker_state.worker_state() is fresh_cache  # outside a Dask worker


def test_a_model_file_replaced_in_place_is_loaded_again(tmp_path: Path) -> None:
    ref = save_net(tmp_path / "net.pt", 2)
    first = model_cache.cached_model(ref, PATCH)
    save_net(tmp_path / "net.pt", 3)
    second = model_cache.cached_model(ref, PATCH)
    assert second is not first and second.out_channels == 3
    assert second.sha256 != first.sha256


def test_the_same_file_at_another_path_is_the_same_model(tmp_path: Path) -> None:
    ref = save_net(tmp_path / "net.pt", 2)
    os.link(tmp_path / "net.pt", tmp_path / "alias.pt")
    first = model_cache.cached_model(ref, PATCH)
    alias = ModelRef(kind="torchscript", path=str(tmp_path / "alias.pt"))
    assert model_cache.cached_model(alias, PATCH) is first


def test_a_file_is_hashed_once_while_it_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = save_net(tmp_path / "net.pt", 2)
    calls: list[str] = []
    real = model_cache.file_sha256

    def counting(path: str | os.PathLike[str]) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(model_cache, "file_sha256", counting)
    for _ in range(5):
        model_cache.cached_model(ref, PATCH)
    assert calls == [ref.path]


def test_at_most_capacity_models_stay_loaded(tmp_path: Path, fresh_cache: WorkerState) -> None:
    refs = [save_net(tmp_path / f"net{i}.pt", i + 1) for i in range(3)]
    loaded = [model_cache.cached_model(ref, PATCH) for ref in refs]
    assert len(fresh_cache.models) == 2
    assert model_cache.cached_model(refs[2], PATCH) is loaded[2]
    assert model_cache.cached_model(refs[0], PATCH) is not loaded[0]  # evicted, loaded afresh


def test_a_model_without_a_file_is_keyed_by_its_config() -> None:
    small = ModelRef(kind="architecture", architecture="unet3d", config=(("in_channels", 1),))
    other = ModelRef(kind="architecture", architecture="unet3d", config=(("in_channels", 2),))
    assert model_cache.model_identity(small) != model_cache.model_identity(other)
    assert model_cache.model_identity(small) == model_cache.model_identity(small)


def test_a_model_is_cached_per_memory_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` makes an eager 3D-conv model channels-last on the CPU, ``contiguous`` keeps PyTorch's
    layout: two modules, never one handed to the other's jobs; ``PYTC_CHANNELS_LAST=0`` makes
    ``auto`` contiguous (the same cache entry)."""
    monkeypatch.delenv("PYTC_CHANNELS_LAST", raising=False)
    config = (("filters", (4, 6, 8)), ("isotropy", (False, False, True)), ("out_channels", 2))
    ref = ModelRef(kind="architecture", architecture="unet3d", config=config)
    fast = model_cache.cached_model(ref, PATCH, "cpu", "auto")
    plain = model_cache.cached_model(ref, PATCH, "cpu", "contiguous")
    assert plain is not fast and fast.channels_last and not plain.channels_last
    fast_w, plain_w = (
        next(
            m.weight for m in loaded.module.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1
        )
        for loaded in (fast, plain)
    )  # with one input channel both layouts are the same strides
    assert fast_w.is_contiguous(memory_format=torch.channels_last_3d) and not fast_w.is_contiguous()
    assert plain_w.is_contiguous()
    assert model_cache.cached_model(ref, PATCH, "cpu", "auto") is fast
    monkeypatch.setenv("PYTC_CHANNELS_LAST", "0")
    assert model_cache.cached_model(ref, PATCH, "cpu", "auto") is plain
