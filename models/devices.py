"""Where a model runs: the one rule for a job's ``device`` (inference and training alike)."""

from __future__ import annotations

import torch


def pick_device(requested: str) -> torch.device:
    """``cuda`` when asked for, or for ``auto`` where a GPU is visible; else the CPU."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
