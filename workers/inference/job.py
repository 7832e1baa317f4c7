"""The inference job as the engine sees it: frozen, typed, already validated at the edge.

``service.documents.inference`` parses YAML/JSON into these (pydantic at the edge, dataclasses
inside). Everything here is small and picklable: it is what a Dask task carries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from models.ref import ModelRef
from volumes.box import Box
from workers.confine import confined, node

Blending = Literal["gaussian", "monai_gaussian", "bump", "constant"]
# PyTC v1 on heads without activation: each window clipped at 0, TTA min/max started from 1/0
RawHeads = Literal["keep", "pytc"]
PadMode = Literal["reflect", "replicate", "constant"]
Reduce = Literal["mean", "min", "max"]
Activation = Literal["sigmoid", "softmax", "tanh", "none"]
OutputFormat = Literal["zarr3", "zarr2", "n5", "precomputed"]
OutputDtype = Literal["float32", "float16", "uint8"]
Uint8Rounding = Literal["truncate", "round"]  # truncate: PyTC's (x * 255).astype(uint8)
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["float32", "bfloat16", "float16"]
# The tensors' memory layout on a CPU: "auto" runs eager 3D-conv models channels-last (faster;
# rounds differently by about 1e-5), "contiguous" as PyTorch (and PyTC) lays them out
MemoryFormat = Literal["auto", "contiguous"]


@dataclass(frozen=True)
class Normalize:
    """``auto``: integer input divided by its dtype's max, float as is; then optional (x - mean) / std."""

    mode: Literal["auto", "none"] = "auto"
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class MaskSpec:
    """A mask array over the input (``workers.inference.mask``): nonzero = compute here."""

    path: str  # absolute, already resolved inside the data roots
    dataset: str | None = None


@dataclass(frozen=True)
class InputSpec:
    path: str  # absolute, already resolved inside the data roots
    dataset: str | None = None
    roi: Box | None = None  # spatial (z, y, x); None = whole volume
    normalize: Normalize = field(default_factory=Normalize)
    mask: MaskSpec | None = None  # None = every window computed

    def mask_node(self, data_roots: tuple[str, ...]) -> Path | None:
        """The mask array's directory (or file), checked to lie inside the data roots now."""
        if self.mask is None:
            return None
        return confined(node(self.mask.path, self.mask.dataset), data_roots)


@dataclass(frozen=True)
class WindowSpec:
    patch_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    blending: Blending = "gaussian"
    pad_size: tuple[int, int, int] = (0, 0, 0)
    pad_mode: PadMode = "reflect"
    batch_size: int = 4
    tta_variants: Literal[1, 4, 8, 16] = 1
    tta_reduce: Reduce = "mean"
    raw_heads: RawHeads = "keep"


@dataclass(frozen=True)
class OutputSpec:
    path: str  # absolute, already resolved inside the data roots
    dataset: str = "pred"
    format: OutputFormat = "zarr3"
    dtype: OutputDtype = "float32"
    heads: tuple[int, ...] = ()  # channels per head; () = one head with all channels
    activations: tuple[Activation, ...] = ("none",)
    chunks: tuple[int, int, int] = (32, 256, 256)
    overwrite: bool = False
    # what each head predicts, where TTA must know it: "affinity" heads (z, y, x nearest-neighbour
    # affinities) move and shift channels under flips and transposes; () = nothing special
    targets: tuple[str, ...] = ()
    pyramid: bool = True  # the image's coarser levels, filled after level 0 (workers.pyramid)
    # zarr v3 or precomputed shards (z, y, x), each a whole number of chunks; None = unsharded. A
    # shard is then the unit one block writes whole (the plan's chunk): every shard has one writer.
    shards: tuple[int, int, int] | None = None
    uint8_rounding: Uint8Rounding = "truncate"

    @property
    def write_unit(self) -> tuple[int, int, int]:
        """What one writer owns whole: the shard when sharded, else the chunk."""
        return self.shards or self.chunks


@dataclass(frozen=True)
class ComputeSpec:
    block_shape: tuple[int, int, int] | None = None  # None = the planner's choice
    device: Device = "auto"
    precision: Precision = "float32"
    memory_format: MemoryFormat = "auto"


@dataclass(frozen=True)
class InferenceJob:
    input: InputSpec
    model: ModelRef
    window: WindowSpec
    output: OutputSpec
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    document: str = "{}"  # the submitted job document as canonical JSON, recorded in the output's attrs
    # The data roots (resolved) its paths were confined to at admission; the engine confines them
    # again whenever it opens them (workers.confine). () = not confined (tests, debugging).
    data_roots: tuple[str, ...] = ()

    def input_node(self) -> Path:
        """The input array's directory (or file), checked to lie inside the data roots now."""
        return confined(node(self.input.path, self.input.dataset), self.data_roots)

    def output_node(self) -> Path:
        """The output image's directory (its levels inside), checked to lie inside the data roots now."""
        return confined(node(self.output.path, self.output.dataset), self.data_roots)

    def layout_key(self, model_sha256: str) -> str:
        """Hash of everything that decides the output's values and block layout.

        Done markers and scratch live under this key, so a changed spec never reuses stale ones, and
        an output resumes only under the key it was made with. What changes no value is left out, so
        that a rerun with it changed resumes: ``overwrite``, ``device``, the window's ``batch_size``
        (each window is computed alone, however many share a forward pass), the registry name the
        model was found by (the sha256 of its file is in the key), and the TTA reduction of one variant.
        ``compute.memory_format`` is in it (it changes the last bits of floats, which uint8
        truncation can turn into a grey level), so an output is never resumed with the other layout.
        Those that were once in the key are pinned to one value rather than dropped, so that the
        keys of outputs written before stay as they were (the batch size at its default, 4); fields
        added since enter the key only when they change values from what older jobs computed
        (:func:`_window_key`, :func:`_output_key`).
        """
        window = replace(
            self.window,
            batch_size=_KEY_BATCH_SIZE,
            # one variant reduces to itself, unless PyTC's min/max starts (raw_heads: pytc) apply
            tta_reduce=self.window.tta_reduce
            if self.window.tta_variants > 1 or self.window.raw_heads == "pytc"
            else "mean",
        )
        payload = {
            # without a mask, the keys of older jobs stay as they were
            "input": {k: v for k, v in asdict(self.input).items() if not (k == "mask" and v is None)},
            "model_sha256": model_sha256,
            "model": asdict(replace(self.model, name=None)),
            "window": _window_key(window),
            "output": _output_key(self.output),
            "block_shape": self.compute.block_shape,
            "precision": self.compute.precision,
        }
        if self.compute.memory_format != "auto":  # auto: what every job computed before the option
            payload["memory_format"] = self.compute.memory_format
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


# What each blending is called in layout keys. ``gaussian`` meant MONAI's map until PyTC's became
# ``gaussian``: an output made then keeps its key under the name that map has now, and PyTC's map
# has a key of its own, so a run under the new default never resumes (mixes into) an old output.
_KEY_BLENDING = {
    "gaussian": "pytc_gaussian",
    "monai_gaussian": "gaussian",
    "bump": "bump",
    "constant": "constant",
}


def _window_key(window: WindowSpec) -> dict[str, object]:
    fields = asdict(window)
    fields["blending"] = _KEY_BLENDING[window.blending]
    if window.raw_heads == "keep":  # what every job computed before the option existed
        del fields["raw_heads"]
    return fields


def _output_key(output: OutputSpec) -> dict[str, object]:
    fields = {k: v for k, v in asdict(output).items() if k != "overwrite"}
    if not output.targets:  # keys of older jobs stay
        del fields["targets"]
    if output.pyramid:  # the default: keys of older jobs stay
        del fields["pyramid"]
    if output.shards is None:
        del fields["shards"]
    if output.dtype != "uint8" or output.uint8_rounding == "round":  # round: what older jobs wrote
        del fields["uint8_rounding"]
    return fields


# The batch size every layout key is computed with (WindowSpec's default; see layout_key).
_KEY_BATCH_SIZE = 4

# Key of the output array's attributes under which the engine records its identity:
# {"layout_key": str, "complete": bool, "job": dict, "model_sha256": str, "version": str}
OUTPUT_ATTRS_KEY = "pytc"
