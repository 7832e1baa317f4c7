"""Models loaded once per worker, keyed by what they are: the model file's sha256, the device and
the memory format (``compute.memory_format``: a module made channels-last is another module).

The cache is the worker's (:func:`workers.runtime.state.worker_state`: the worker's plugin, or this
process's state outside a worker that has one). A file is hashed again only when its path, size or
mtime changes, so a block pays one ``stat`` for the key, and a model file replaced in place is
loaded afresh.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from models.devices import pick_device
from models.errors import ModelNotFoundError
from models.loading import LoadedModel, file_sha256, load_model
from models.ref import ModelRef
from workers.inference.job import InferenceJob, MemoryFormat
from workers.inference.predictor import WindowPredictor, prefers_channels_last
from workers.runtime.affinity import torch_threads
from workers.runtime.allocator import tune_allocator
from workers.runtime.state import worker_state

log = logging.getLogger(__name__)


def file_identity(path: str) -> str:
    """sha256 of a file, hashed again only when its size or mtime changes."""
    try:
        stat = os.stat(path)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"model file {path} does not exist") from exc
    key = (path, stat.st_mtime_ns, stat.st_size)
    sha, _ = worker_state().file_hashes.get_or_load(key, lambda: file_sha256(path))
    return sha


def _weights_file(ref: ModelRef) -> str | None:
    return ref.checkpoint if ref.kind == "architecture" else ref.path


def model_identity(ref: ModelRef, content_sha256: str | None = None) -> str:
    """What the model is: its kind and config plus the hash of the file that holds its weights (a
    changed file at the same path is a new model; the same file at two paths is one model)."""
    weights = _weights_file(ref)
    if content_sha256 is None:
        content_sha256 = file_identity(weights) if weights else ""
    return json.dumps(
        [ref.kind, ref.architecture, ref.config_dict(), content_sha256], sort_keys=True, default=str
    )


def _layout(memory_format: MemoryFormat) -> MemoryFormat:
    """The memory format a model loaded now for ``memory_format`` gets: ``PYTC_CHANNELS_LAST=0``
    makes ``auto`` contiguous in this worker (:func:`prefers_channels_last`)."""
    return "contiguous" if os.environ.get("PYTC_CHANNELS_LAST", "1") == "0" else memory_format


def cached_model(
    ref: ModelRef,
    patch_size: tuple[int, int, int],
    device: str = "cpu",
    memory_format: MemoryFormat = "auto",
) -> LoadedModel:
    """The model ``ref`` names on ``device``, loaded at most once per worker while it stays cached.

    The memory format is part of the key: a module made channels-last for ``auto`` is never handed
    to a job that asks for ``contiguous``, nor the other way round."""
    cache = worker_state().models
    layout = _layout(memory_format)
    key: Any = (model_identity(ref), device, layout)

    def load() -> LoadedModel:
        tune_allocator()
        torch.set_num_threads(torch_threads())
        loaded = load_model(ref, probe_shape=patch_size)
        loaded.module.to(device).eval()
        if prefers_channels_last(loaded.module, torch.device(device), layout):
            loaded.module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            loaded.channels_last = True
        return loaded

    loaded, evicted = cache.get_or_load(key, load)
    if _weights_file(ref) and key[0] != model_identity(ref, loaded.sha256):
        # The file changed between hashing it and loading it: file the model under what was
        # loaded, where the next block (which hashes the new file) looks for it.
        log.warning("model file %s changed while loading; keyed by its new sha256", _weights_file(ref))
        cache.pop(key)
        evicted += cache.put((model_identity(ref, loaded.sha256), device, layout), loaded)
    if evicted and device.startswith("cuda"):
        del evicted
        torch.cuda.empty_cache()  # hand the evicted models' blocks back to the driver
    return loaded


def cached_predictor(job: InferenceJob) -> WindowPredictor:
    device = pick_device(job.compute.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    loaded = cached_model(job.model, job.window.patch_size, str(device), job.compute.memory_format)
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
        channels_last=loaded.channels_last,
        targets=job.output.targets,
        raw_heads=job.window.raw_heads,
    )
