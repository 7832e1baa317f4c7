"""The segmentation job as the block tasks see it: frozen, small, picklable.

``service.documents.segmentation`` builds it from the document; :func:`check_input` checks it
against its input (a prediction (C, Z, Y, X), uint8 or float, with the decoder's channels).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from volumes.box import Box
from volumes.errors import VolumeError, VolumeFormatError, VolumeNotFoundError
from volumes.labels.decoders import Decoder
from volumes.open import open_volume
from volumes.output import OutputFormat
from volumes.volume import Volume
from workers.confine import confined, node
from workers.errors import PathEscapeError, SpecError
from workers.inference.job import InferenceJob

Relabel = Literal["sequential", "none"]
ALGORITHM = "blockwise-cc-1"  # in the layout key: a changed algorithm never resumes an older run
DEFAULT_BLOCK = (64, 512, 512)
AGGLOMERATE_FRAGMENTS = "steepest-edges-1"  # affinity_agglomerate's fragments (was: a seeded watershed)
BC_DILATION = "strips-1"  # bc_connected's dilation from neighbours' strips (was: a numbered copy, rank step)


@dataclass(frozen=True)
class SegInput:
    path: str  # resolved, inside the data roots
    dataset: str | None
    # the prediction's channels the decoder reads, in its order; None: the first ones
    channels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SegOutput:
    path: str
    dataset: str
    format: OutputFormat = "zarr3"
    chunks: tuple[int, int, int] = (32, 256, 256)
    relabel: Relabel = "sequential"
    overwrite: bool = False
    pyramid: bool = True  # the labels image's coarser levels (mode rule), filled after level 0


@dataclass(frozen=True)
class SegmentationJob:
    input: SegInput
    decoder: Decoder
    output: SegOutput
    block_shape: tuple[int, int, int] | None = None
    document: str = "{}"
    data_roots: tuple[str, ...] = ()
    # ``inference:``: the job run first as a stage, whose output is ``input`` (its prediction kept)
    inference: InferenceJob | None = None

    def output_node(self) -> Path:
        return confined(node(self.output.path, self.output.dataset), self.data_roots)

    def block_for(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The job's block, or the default grown from the chunks (a multiple of them), cut to the
        volume rounded up to whole chunks."""
        chunks = self.output.chunks
        wanted = self.block_shape or tuple(
            max(c, d - d % c) for c, d in zip(chunks, DEFAULT_BLOCK, strict=True)
        )
        out = [min(w, -(-s // c) * c) for w, s, c in zip(wanted, shape, chunks, strict=True)]
        return (out[0], out[1], out[2])

    def layout_key(self, shape: tuple[int, ...], dtype: np.dtype) -> str:
        """Hash of what decides the labels and their layout (not ``overwrite``): markers and the
        scratch of a run live under it, and an output resumes only under the key it was made with."""
        channels = [] if self.input.channels is None else [list(self.input.channels)]
        record = {
            "algorithm": ALGORITHM,
            "input": [self.input.path, self.input.dataset, list(shape), np.dtype(dtype).str, *channels],
            "decoder": {  # affinity_agglomerate's fields only where set: other jobs keep their keys
                k: v
                for k, v in asdict(self.decoder).items()
                if v is not None or k not in ("aff_threshold", "merge_function")
            },
            "output": [self.output.format, list(self.output.chunks), self.output.relabel]
            + ([] if self.output.pyramid else ["no-pyramid"]),
            "block": list(self.block_for(tuple(shape[1:]))),
        }
        if self.decoder.name == "affinity_agglomerate":  # its fragments' algorithm (others keep their keys)
            record["fragments"] = AGGLOMERATE_FRAGMENTS
        if self.decoder.name == "bc_connected":  # its steps and scratch (others keep their keys)
            record["dilation"] = BC_DILATION
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=list).encode()).hexdigest()[:16]


def input_field(job: SegmentationJob) -> str:
    if job.inference is not None:
        return "inference.output.dataset"
    return "input.dataset" if job.input.dataset else "input.path"


def channels_read(job: SegmentationJob) -> tuple[int, ...]:
    """The prediction's channels the decoder reads, in the decoder's order."""
    return job.input.channels if job.input.channels is not None else tuple(range(job.decoder.channels))


def read_prediction(job: SegmentationJob, source: Volume, box: Box) -> np.ndarray:
    """The decoder's channels of ``source`` over the spatial ``box``: (channels, z, y, x)."""
    channels = channels_read(job)
    first = channels[0]
    if channels == tuple(range(first, first + len(channels))):  # one read
        return source.read(Box((first, *box.offset), (len(channels), *box.shape)))
    return np.concatenate([source.read(Box((c, *box.offset), (1, *box.shape))) for c in channels])


def open_prediction(job: SegmentationJob) -> Volume:
    """The input, or a SpecError naming ``input.path`` / ``input.dataset``."""
    path, dataset = job.input.path, job.input.dataset
    try:
        confined(node(path, dataset), job.data_roots)
    except PathEscapeError as err:
        raise SpecError("input.path", str(err)) from err
    try:
        return open_volume(path, dataset)
    except VolumeNotFoundError as err:
        if not Path(path).exists():
            raise SpecError("input.path", f"{path} does not exist") from err
        raise SpecError(input_field(job), str(err)) from err
    except VolumeFormatError as err:
        raise SpecError("input.path", f"not a readable volume: {err}") from err
    except (VolumeError, OSError) as err:
        raise SpecError(input_field(job), f"cannot open {path} (dataset {dataset!r}): {err}") from err


def check_input(job: SegmentationJob, source: Volume, max_voxels: int | None = None) -> None:
    """A prediction: (C, Z, Y, X), uint8 (PyTC's 0-255) or float, with the decoder's channels."""
    field = input_field(job)
    if source.ndim != 4:
        raise SpecError(
            field,
            f"expected a prediction (C, Z, Y, X), got a {source.ndim}-D array of shape {list(source.shape)}",
        )
    if not (source.dtype == np.uint8 or np.issubdtype(source.dtype, np.floating)):
        raise SpecError(field, f"expected a prediction of uint8 (0-255) or float, got {source.dtype}")
    need = job.decoder.channels
    if job.input.channels is not None:
        if max(job.input.channels) >= source.shape[0]:
            raise SpecError(
                "channels",
                f"{list(job.input.channels)} names a channel the prediction lacks: it has "
                f"{source.shape[0]} (0..{source.shape[0] - 1})",
            )
    elif source.shape[0] < need:
        raise SpecError(
            field, f"decoder {job.decoder.name} reads {need} channel(s); the input has {source.shape[0]}"
        )
    voxels = int(np.prod(source.shape[1:], dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise SpecError(field, f"the input has {voxels} voxels; at most {max_voxels} are allowed here")
