"""The model cache: LRU of loaded models keyed by the model file's sha256 and the device."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import workers.inference.model_cache as model_cache

from models.ref import ModelRef
from workers.runtime.state import PLUGIN_NAME, LRUCache, ModelCachePlugin

PATCH = (3, 8, 8)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> ModelCachePlugin:
    plugin = ModelCachePlugin(capacity=2)
    monkeypatch.setattr(model_cache, "_FALLBACK", plugin)
    monkeypatch.setattr(model_cache, "_HASHES", LRUCache(8))
    return plugin


def save_net(path: Path, out_channels: int) -> ModelRef:
    torch.jit.script(torch.nn.Conv3d(1, out_channels, 3, padding=1).eval()).save(str(path))
    return ModelRef(kind="torchscript", path=str(path))


def test_lru_keeps_the_most_recently_used() -> None:
    cache: LRUCache[str] = LRUCache(2)
    assert cache.put("a", "A") == [] and cache.put("b", "B") == []
    assert cache.get("a") == "A"  # a is now the most recent
    assert cache.put("c", "C") == ["B"]
    assert cache.keys() == ["a", "c"]
    value, evicted = cache.get_or_load("d", lambda: "D")
    assert (value, evicted) == ("D", ["A"])
    assert cache.get_or_load("d", lambda: pytest.fail("loaded twice")) == ("D", [])


def test_the_plugin_travels_pickled_without_its_models() -> None:
    plugin = ModelCachePlugin(capacity=3)
    plugin.put("key", object())
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.name == PLUGIN_NAME and copy.capacity == 3
    assert len(copy.cache) == 0 and copy.cache.max_entries == 3


def test_a_model_is_loaded_once_and_kept_by_the_fallback_cache(
    tmp_path: Path, fresh_cache: ModelCachePlugin
) -> None:
    ref = save_net(tmp_path / "net.pt", 2)
    first = model_cache.cached_model(ref, PATCH)
    assert model_cache.cached_model(ref, PATCH) is first
    assert first.out_channels == 2 and len(fresh_cache.cache) == 1
    assert model_cache.model_cache() is fresh_cache  # outside a Dask worker


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


def test_at_most_capacity_models_stay_loaded(tmp_path: Path, fresh_cache: ModelCachePlugin) -> None:
    refs = [save_net(tmp_path / f"net{i}.pt", i + 1) for i in range(3)]
    loaded = [model_cache.cached_model(ref, PATCH) for ref in refs]
    assert len(fresh_cache.cache) == 2
    assert model_cache.cached_model(refs[2], PATCH) is loaded[2]
    assert model_cache.cached_model(refs[0], PATCH) is not loaded[0]  # evicted, loaded afresh


def test_a_model_without_a_file_is_keyed_by_its_config() -> None:
    small = ModelRef(kind="architecture", architecture="unet3d", config=(("in_channels", 1),))
    other = ModelRef(kind="architecture", architecture="unet3d", config=(("in_channels", 2),))
    assert model_cache.model_identity(small) != model_cache.model_identity(other)
    assert model_cache.model_identity(small) == model_cache.model_identity(small)
