"""Models loaded once per worker, keyed by what they are: the model file's sha256 and the device.

Inside a Dask worker the cache lives in the worker's ``ModelCachePlugin`` (``pytc-worker`` installs
it); elsewhere (tests, an embedded cluster without it) in a process-level dict.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import torch

from models.loading import LoadedModel, file_sha256, load_model
from workers.inference import WindowPredictor
from workers.job import InferenceJob, ModelRef
from workers.plugin import PLUGIN_NAME, ModelCachePlugin

_FALLBACK = ModelCachePlugin(capacity=4)
_HASHES: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _file_identity(path: str) -> str:
    """sha256 of a file, hashed again only when its size or mtime changes."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)
    return _HASHES[key]


def model_identity(ref: ModelRef) -> str:
    """What the model is: the file's hash (a changed file at the same path is a new model)."""
    weights = ref.checkpoint if ref.kind == "architecture" else ref.path
    content = _file_identity(weights) if weights else ""
    return json.dumps([ref.kind, ref.architecture, ref.config_dict(), content], sort_keys=True, default=str)


def _cache() -> ModelCachePlugin:
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except ValueError:  # not inside a Dask worker
        return _FALLBACK
    return plugin if isinstance(plugin, ModelCachePlugin) else _FALLBACK


def cached_model(ref: ModelRef, patch_size: tuple[int, int, int], device: str = "cpu") -> LoadedModel:
    from workers.tasks import torch_threads

    key: Any = (model_identity(ref), device)
    with _LOCK:
        cache = _cache()
        loaded = cache.get(key)
        if loaded is None:
            torch.set_num_threads(torch_threads())
            loaded = load_model(ref, probe_shape=patch_size)
            loaded.module.to(device).eval()
            cache.put(key, loaded)
        return loaded


def cached_predictor(job: InferenceJob) -> WindowPredictor:
    device = pick_device(job.compute.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    loaded = cached_model(job.model, job.window.patch_size, str(device))
    heads = job.output.heads or (loaded.out_channels,)
    return WindowPredictor(
        module=loaded.module,
        device=device,
        heads=tuple(heads),
        activations=job.output.activations,
        tta_count=job.window.tta_variants,
        tta_reduce=job.window.tta_reduce,
        precision=job.compute.precision,
        fixed_batch=loaded.fixed_input_shape[0] if loaded.fixed_input_shape else None,
    )
