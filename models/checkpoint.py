"""The checkpoint format: PyTC's ``torch.save`` dict, written atomically, read with ``weights_only``.

A checkpoint is ``{"state_dict", "optimizer", "lr_scheduler", "iteration", ...}`` (PyTC's keys;
``iteration`` = iterations completed) plus our ``schema_version``. Loading never unpickles
arbitrary objects (``weights_only=True``), so a checkpoint from a stranger cannot run code.

When torch refuses a file, its message advises loading it again with the safety off. A service
must never pass that on: :func:`load_failure` says instead what is wrong with the file and the safe
way out (save the weights alone again), and keeps only the part of torch's text that names the
problem.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from models import checkpoint_keys as keys
from models.errors import ArchitectureMismatchError, CheckpointError, ModelNotFoundError
from volumes.files import atomic_write

CHECKPOINT_SCHEMA_VERSION = 1

# Prefixes that wrappers put in front of every key: DataParallel/DDP, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# How many differing layers an error message lists before summarising the rest.
_MAX_LISTED = 25
# What to do with a file that holds more than weights; never "load it with the safety off".
RESAVE_ADVICE = (
    'save the weights alone where the model was trained: torch.save({"state_dict": model.state_dict()}, path)'
)
# torch's words for a pickle asking for a class or function the weights-only unpickler refuses.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNREADABLE_OPCODE = re.compile(r"Unsupported operand (\d+)")
_ZIP_FAILURE = re.compile(r"failed reading zip archive: ([^.]+)")

StrPath = str | os.PathLike[str]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = module.module if isinstance(module, DataParallel | DistributedDataParallel) else None
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def save_checkpoint(path: StrPath, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically and durably (:func:`volumes.files.atomic_write`):
    a reader sees the old file or the new one, never half of one, and the file is shared (0644).

    Any ``nn.Module`` value is replaced by its unwrapped module's ``state_dict`` (no ``module.``
    prefix), and ``schema_version`` is added unless present.
    """
    data = {k: unwrap_module(v).state_dict() if isinstance(v, nn.Module) else v for k, v in payload.items()}
    data.setdefault(keys.SCHEMA_VERSION, CHECKPOINT_SCHEMA_VERSION)
    atomic_write(path, lambda handle: torch.save(data, handle), durable=True)


def load_checkpoint(path: StrPath) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``.

    A missing file raises :class:`ModelNotFoundError`; anything else that goes wrong (corrupt or
    truncated file, a pickle asking for a global that weights_only refuses, not a dict) raises
    :class:`CheckpointError` naming the path and the cause.
    """
    source = Path(path)
    if not source.exists():
        raise ModelNotFoundError(f"checkpoint {source} does not exist")
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} is not a file")
    if source.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {source} is empty (0 bytes): copy or save it again")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore")
            data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load's failure modes are an open set; the cause is chained
        raise CheckpointError(load_failure(f"checkpoint {source}", exc)) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {source} holds a {type(data).__name__}, expected a dict")
    return data


def load_failure(what: str, exc: BaseException) -> str:
    """Why ``what`` (``checkpoint PATH``, ``torchscript model PATH``) could not be loaded, from
    torch's exception, in words that never advise turning ``weights_only`` off.

    A refused global (a class or function the file's pickle asks for: a whole module saved with
    ``torch.save(model)``, a custom object, or code) is named, with the safe remedy; a pickle or zip
    archive torch cannot read is a damaged file; anything else keeps the first line of torch's
    message only if it says nothing about ``weights_only``."""
    text = str(exc)
    refused = _REFUSED_GLOBAL.search(text)
    if refused is not None and _cut_short(refused.group(1)):
        return f"{what} is truncated (its data ends partway through): copy or save it again"
    if refused is not None:
        return (
            f"{what} holds Python objects, not only tensors and plain containers (it asks for "
            f"{refused.group(1)}), so loading it could run code and it is refused unread; " + RESAVE_ADVICE
        )
    if (opcode := _UNREADABLE_OPCODE.search(text)) is not None:
        return (
            f"{what} is not a file torch wrote, or it is damaged (its pickle data has an "
            f"unreadable opcode {opcode.group(1)}): copy or save it again"
        )
    if (zip_failure := _ZIP_FAILURE.search(text)) is not None:
        return (
            f"{what} is not a file torch wrote, or it is truncated or damaged (its zip archive "
            f"cannot be read: {zip_failure.group(1).strip()}): copy or save it again"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    cause = type(exc).__name__ + (f": {first_line}" if first_line else "")
    if "weights_only" in cause:
        cause = type(exc).__name__
    return f"{what} cannot be loaded ({cause}): copy or save it again"


def _cut_short(name: str) -> bool:
    """Whether a refused global is the beginning of one torch allows: a file that ends mid-name."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # a private helper; without it, the name is reported as it came
        return False
    return any(allowed != name and allowed.startswith(name) for allowed in _get_allowed_globals())


def extract_state_dict(ckpt: Mapping[str, Any], path: StrPath | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: ``ckpt["state_dict"]`` (ours and PyTC's layout) or the
    checkpoint itself when it is a bare state dict. A wrapper prefix (``module.``, ``_orig_mod.``)
    carried by every key is stripped."""
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    bare = keys.STATE_DICT not in ckpt
    state = ckpt if bare else ckpt[keys.STATE_DICT]
    bad = _non_tensor_keys(state)
    if not state or bad is None or (bare and bad):
        raise CheckpointError(f"{where} has no state_dict (keys: {sorted(map(str, ckpt))[:10]})")
    if bad:
        raise CheckpointError(f"{where}: state_dict entries that are not tensors: {bad[:10]}")
    result: dict[str, torch.Tensor] = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in result):
                result = {k[len(prefix) :]: v for k, v in result.items()}
                stripped = True
    return result


def _non_tensor_keys(state: Any) -> list[str] | None:
    """Keys whose entry is not a named tensor; None when ``state`` is no mapping at all."""
    if not isinstance(state, Mapping):
        return None
    return [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: StrPath | None = None
) -> None:
    """Load ``state_dict`` into ``model`` strictly: every key present, none extra, every shape equal.

    Anything else raises :class:`ArchitectureMismatchError` listing the layers with expected vs
    found shapes; nothing is loaded then (never a silent partial load). The one tolerance is
    BatchNorm's ``num_batches_tracked`` counter, absent from checkpoints of old PyTorch versions and
    unused in eval mode: a missing one keeps the module's value.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    mismatched = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or mismatched:
        raise ArchitectureMismatchError(
            _mismatch_message(path, expected, found, missing, unexpected, mismatched),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    complete = dict(state_dict)
    for key, value in model.state_dict().items():
        complete.setdefault(key, value)
    model.load_state_dict(complete, strict=True)


def _mismatch_message(
    path: StrPath | None,
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    lines = [f"  {k}: expected {expected[k]}, found {found[k]}" for k in mismatched]
    lines += [f"  {k}: expected {expected[k]}, not in checkpoint" for k in missing]
    lines += [f"  {k}: not in model, found {found[k]}" for k in unexpected]
    shown = lines[:_MAX_LISTED]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    where = f"checkpoint {path}" if path is not None else "state dict"
    summary = (
        f"{where} does not fit the architecture: {len(mismatched)} shape mismatches, "
        f"{len(missing)} missing, {len(unexpected)} unexpected layers"
    )
    return "\n".join([summary, *shown])
