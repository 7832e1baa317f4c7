"""How a job names a model, and what a worker learnt of it: small, frozen and torch-free.

The control plane builds a :class:`ModelRef` while parsing a job document and hands it to the
workers, which load the model it names (:func:`models.loading.load_model`); a model check on a
worker answers with a :class:`ModelInfo`. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["torchscript", "exported", "architecture"]


@dataclass(frozen=True)
class ModelRef:
    """Exactly one way of naming a model. ``config`` is a tuple of (key, value) pairs (hashable)."""

    kind: ModelKind
    path: str | None = None  # torchscript / exported file
    architecture: str | None = None
    config: tuple[tuple[str, Any], ...] = ()
    checkpoint: str | None = None
    name: str | None = None  # registry name it was resolved from, if any

    def config_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config}


@dataclass(frozen=True)
class ModelInfo:
    """What the control plane needs to know of a model, found by loading it on a worker, and of
    the device the job would run on there: what it is, and each precision it does not run
    natively with the reason (``workers.runtime.precision``; empty where nobody looked)."""

    in_channels: int
    out_channels: int
    sha256: str
    description: str = ""
    device: str = ""
    unsupported_precisions: tuple[tuple[str, str], ...] = ()
