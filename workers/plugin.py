"""The per-worker model cache as a Dask ``WorkerPlugin``: a model is loaded once per worker."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "pytc-model-cache"


class ModelCachePlugin(WorkerPlugin):
    """Holds loaded models keyed by (model file sha256, device), the most recent ``capacity`` of them,
    so one worker serves blocks of several jobs and models without reloading."""

    name = PLUGIN_NAME

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.models: OrderedDict[Any, Any] = OrderedDict()

    def setup(self, worker: Any) -> None:
        self.models.clear()

    def get(self, key: Any) -> Any:
        model = self.models.get(key)
        if model is not None:
            self.models.move_to_end(key)
        return model

    def put(self, key: Any, model: Any) -> None:
        self.models[key] = model
        self.models.move_to_end(key)
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)
