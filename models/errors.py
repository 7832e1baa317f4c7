"""Errors of the model layer. Each also subclasses the matching builtin, so callers that only know
builtins (``ValueError`` -> 422, ``FileNotFoundError`` -> 404/422) still map them sensibly."""

from __future__ import annotations

from collections.abc import Sequence


class ModelError(Exception):
    """Base of every error raised by :mod:`models`."""


class ModelConfigError(ModelError, ValueError):
    """A model reference or architecture config that cannot be honoured (unknown key, bad value,
    unknown architecture, a model that cannot run on the probe input)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model or checkpoint file that should exist does not."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint or model file that cannot be used: corrupt, refused by ``weights_only=True``,
    or without the keys we need."""


class ArchitectureMismatchError(CheckpointError):
    """A state dict that does not fit the module: missing, unexpected or differently shaped layers.

    The layer lists are kept as attributes (and survive pickling, which Dask needs) so callers can
    show them without parsing the message.
    """

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
