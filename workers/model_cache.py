"""Models loaded once per worker process, keyed by what they are (file sha256, device)."""

from __future__ import annotations

import threading

import torch

from models.loading import LoadedModel, load_model
from workers.inference import WindowPredictor
from workers.job import InferenceJob, ModelRef

_MODELS: dict[tuple[ModelRef, str], LoadedModel] = {}
_LOCK = threading.Lock()


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def cached_model(ref: ModelRef, patch_size: tuple[int, int, int], device: str = "cpu") -> LoadedModel:
    from workers.tasks import torch_threads

    key = (ref, device)
    with _LOCK:
        if key not in _MODELS:
            torch.set_num_threads(torch_threads())
            loaded = load_model(ref, probe_shape=patch_size)
            loaded.module.to(device).eval()
            _MODELS[key] = loaded
        return _MODELS[key]


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
