"""The segmentation document: YAML/JSON -> :class:`SegmentationDocument` -> the frozen
:class:`workers.segmentation.job.SegmentationJob`.

The decoder takes PyTC's parameter names and defaults for the decoder it names
(``connectomics/utils/process.py``); a parameter another decoder has, an unknown one, or a value
this service does not decode yet is a SpecError naming ``decoder.<parameter>``. Nothing is read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from service.documents.inference import InferenceDocument, ModelResolver, parse_inference
from service.documents.loading import canonical_json
from service.documents.sections import (
    NonNegInt,
    PosTriple,
    Section,
    StrictBool,
    Text,
    local_roots,
    located,
    require_kind,
    resolved_roots,
    triple,
    validate,
)
from volumes.labels.decoders import (
    HALO_DOUBLINGS,
    PER_SLICE,
    WATERSHED,
    Connectivity,
    Decoder,
    DecoderName,
    RemoveSmallMode,
)
from volumes.urls import is_url
from workers.errors import SpecError
from workers.inference.job import InferenceJob
from workers.limits import DEFAULT_LIMITS, Limits, check_chunk_bytes
from workers.segmentation.job import SegInput, SegmentationJob, SegOutput

Threshold = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
SignedThreshold = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]  # bcd's distance
NonNegTriple = Annotated[list[NonNegInt], Field(min_length=3, max_length=3)]
ScaleTriple = Annotated[
    list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]], Field(min_length=3, max_length=3)
]
AXES = ("z", "y", "x")

# Each decoder's parameters and PyTC's defaults (affinity_connected is not in PyTC v1).
DEFAULTS: dict[str, dict[str, Any]] = {
    "binary_connected": {
        "thres": 0.8,
        "thres_small": 128,
        "scale_factors": [1.0, 1.0, 1.0],
        "remove_small_mode": "background",
        "connectivity": 26,
    },
    "bc_connected": {
        "thres1": 0.8,
        "thres2": 0.5,
        "thres_small": 128,
        "scale_factors": [1.0, 1.0, 1.0],
        "dilation_struct": [1, 5, 5],
        "remove_small_mode": "background",
        "connectivity": 26,
    },
    "affinity_connected": {
        "thres": 0.5,
        "thres_small": 128,
        "remove_small_mode": "background",
        "connectivity": 6,
    },
    "binary_watershed": {
        "thres1": 0.98,
        "thres2": 0.85,
        "thres_small": 128,
        "scale_factors": [1.0, 1.0, 1.0],
        "remove_small_mode": "background",
        "seed_thres": 32,
        "connectivity": 26,
    },
    "bc_watershed": {
        "thres1": 0.9,
        "thres2": 0.8,
        "thres3": 0.85,
        "thres_small": 128,
        "scale_factors": [1.0, 1.0, 1.0],
        "remove_small_mode": "background",
        "seed_thres": 32,
        "connectivity": 26,
    },
    "bcd_watershed": {
        "thres1": 0.9,
        "thres2": 0.8,
        "thres3": 0.85,
        "thres4": 0.5,
        "thres5": 0.0,
        "thres_small": 128,
        "scale_factors": [1.0, 1.0, 1.0],
        "remove_small_mode": "background",
        "seed_thres": 32,
        "connectivity": 26,
    },
}
# affinity_agglomerate: PyTC's waterz tutorial's names (seg_thresholds as `thresholds`); several
# thresholds give one labels image each, from one fragment pass and one region graph.
AGGLOMERATE_DEFAULTS: dict[str, Any] = {
    "thresholds": [0.1],
    "aff_threshold": [0.05, 0.995],
    "merge_function": "aff50_his256",
}
THRESHOLDS = {
    "bc_connected": ("thres1", "thres2"),
    "binary_watershed": ("thres1", "thres2"),
    "bc_watershed": ("thres1", "thres2", "thres3"),
    "bcd_watershed": ("thres1", "thres2", "thres3", "thres4", "thres5"),
}
# How far past its block the blockwise watershed reads and floods, unless compute.halo says.
WATERSHED_HALO = (8, 32, 32)


class SegInputSection(Section):
    """The prediction to decode: a (C, Z, Y, X) array, uint8 (0-255, as PyTC writes) or float."""

    path: Text
    dataset: Text | None = None


class DecoderSection(Section):
    """The decoder and PyTC's parameters for it (its defaults where left out): `binary_connected`
    (thres, thres_small, scale_factors, remove_small_mode, connectivity), `bc_connected` (thres1,
    thres2, thres_small, scale_factors, dilation_struct, remove_small_mode, connectivity),
    `affinity_connected` (thres, thres_small, remove_small_mode; 6-connected by construction),
    `binary_watershed` (thres1 seeds, thres2 foreground), `bc_watershed` (thres1, thres2 contour of
    seeds, thres3 foreground), `bcd_watershed` (thres1..thres3, thres4 and thres5 on the signed
    distance in [-1, 1]), each with thres_small, scale_factors, remove_small_mode, seed_thres and
    connectivity (of the seeds). Thresholds compare as PyTC does: `> int(255 * t)` on uint8 maps,
    `> t` on float ones. `affinity_agglomerate` (3 affinity channels z, y, x) takes PyTC's waterz
    names: thresholds (segmentation thresholds on 1 - affinity, each in (0, 1], ascending; several
    give one labels image each, `<output.dataset>/threshold_<t>`), aff_threshold ([low, high] of
    the fragments' watershed on the affinity graph) and merge_function (`aff<Q>_his256` or
    `mean`)."""

    name: DecoderName
    thres: Threshold | None = None
    thres1: Threshold | None = None
    thres2: Threshold | None = None
    thres3: Threshold | None = None
    thres4: SignedThreshold | None = None
    thres5: SignedThreshold | None = None
    seed_thres: NonNegInt | None = None
    thres_small: NonNegInt | None = None
    remove_small_mode: RemoveSmallMode | None = None
    connectivity: Connectivity | None = None
    dilation_struct: PosTriple | None = None
    scale_factors: ScaleTriple | None = None
    thresholds: Annotated[list[Threshold], Field(min_length=1)] | None = None
    aff_threshold: Annotated[list[Threshold], Field(min_length=2, max_length=2)] | None = None
    merge_function: Text | None = None


class SegOutputSection(Section):
    """Where the labels go: an OME-Zarr label image (its own group, level 0 a (z, y, x) array of
    uint32, uint64 when the objects need it, then its pyramid; `pyramid: false` keeps level 0 alone),
    with a table of objects beside it; `relabel: sequential` numbers objects 1..N in raster order of their
    first voxels, `none` keeps PyTC's numbers (gaps where small objects were removed)."""

    path: Text
    dataset: Text = "seg"
    format: Literal["zarr3", "zarr2", "n5"] = "zarr3"
    chunks: PosTriple = [32, 256, 256]
    relabel: Literal["sequential", "none"] = "sequential"
    overwrite: StrictBool = False
    pyramid: StrictBool = True


class SegComputeSection(Section):
    """How the work is cut: the block each task decodes (a multiple of the output's chunks); for the
    watershed decoders, `halo`: how far past its block a task reads and floods (z, y, x)."""

    block_shape: PosTriple | None = None
    halo: NonNegTriple | None = None


class SegmentationDocument(Section):
    """A segmentation job: instance labels from a prediction, with global IDs over the whole volume,
    equal to PyTC's decoder run on the whole volume in memory. The prediction is `input`, or the
    output of `inference` (a whole inference job, `kind` left out), run first as a stage of this
    job and kept; `channels` picks the prediction's channels the decoder reads, in its order."""

    kind: Literal["segmentation"]
    input: SegInputSection | None = None
    inference: InferenceDocument | None = None
    channels: Annotated[list[NonNegInt], Field(min_length=1)] | None = None
    decoder: DecoderSection
    output: SegOutputSection
    compute: SegComputeSection | None = None


def parse_segmentation(
    doc: object,
    data_roots: Sequence[str | Path],
    *,
    limits: Limits = DEFAULT_LIMITS,
    resolve_model: ModelResolver | None = None,
) -> SegmentationJob:
    """``resolve_model`` serves ``inference.model.name`` as it does an inference job's."""
    roots = local_roots(resolved_roots(data_roots))  # segmentation reads and writes local stores only
    document = require_kind(doc, "segmentation")
    parsed = validate(SegmentationDocument, document)
    decoder = decoder_of(parsed.decoder, parsed.compute.halo if parsed.compute else None)
    channels = _channels(parsed.channels, decoder)
    inference: InferenceJob | None = None
    if (parsed.input is None) == (parsed.inference is None):
        given = "both" if parsed.input is not None else "neither"
        raise SpecError(
            "input",
            f"{given} given: name the prediction (input) or the inference job that makes it (inference)",
        )
    if parsed.input is not None:
        in_path, in_dataset = located(parsed.input.path, parsed.input.dataset, roots, "input")
    else:
        inference = inference_stage(document["inference"], data_roots, limits, resolve_model)
        in_path, in_dataset = inference.output.path, inference.output.dataset
    out = parsed.output
    out_path, out_dataset = located(out.path, out.dataset, roots, "output")
    if any(root.is_relative_to(Path(out_path)) for root in roots):
        raise SpecError(
            "output.path", f"{out_path} is a data root (or holds one); name a container inside it"
        )
    source, target = Path(in_path, in_dataset or "").resolve(), Path(out_path, str(out_dataset)).resolve()
    if source.is_relative_to(target) or target.is_relative_to(source):
        what = "the inference stage's output" if inference is not None else "the input"
        raise SpecError("output.dataset", f"the output {target} overlaps {what} {source}")
    if inference is not None and not is_url(inference.input.path):
        image = Path(inference.input.path, inference.input.dataset or "").resolve()
        if image.is_relative_to(target) or target.is_relative_to(image):
            raise SpecError("output.dataset", f"the output {target} overlaps the inference input {image}")
    chunks = triple(out.chunks)
    check_chunk_bytes(chunks, limits)
    block = triple(parsed.compute.block_shape) if parsed.compute and parsed.compute.block_shape else None
    for axis, b, c in zip(AXES, block or chunks, chunks, strict=True):
        if b % c:
            raise SpecError(
                "compute.block_shape",
                f"{list(block or ())} is not a multiple of output.chunks {list(chunks)} (axis {axis})",
            )
    _check_block_memory(block or chunks, decoder, limits)
    output = SegOutput(
        out_path, str(out_dataset), out.format, chunks, out.relabel, out.overwrite, out.pyramid
    )
    return SegmentationJob(
        SegInput(in_path, in_dataset, channels),
        decoder,
        output,
        block,
        document=canonical_json(document),
        data_roots=tuple(str(r) for r in roots),
        inference=inference,
    )


def inference_stage(
    section: Mapping[str, Any],
    data_roots: Sequence[str | Path],
    limits: Limits,
    resolve_model: ModelResolver | None,
) -> InferenceJob:
    """The ``inference:`` section as the inference job it is (``kind`` may be left out); errors name
    ``inference.<field>``. Its output is read by the segmentation, so it is a local store."""
    try:
        job = parse_inference(section, data_roots, resolve_model=resolve_model, limits=limits)
    except SpecError as err:
        raise prefixed(err, "inference.") from None
    if is_url(job.output.path):
        raise SpecError(
            "inference.output.path", "the segmentation reads local stores only; name a local path"
        )
    return job


def prefixed(err: SpecError, prefix: str) -> SpecError:
    """``err`` (of its own class: a 409 stays a 409) with every field it names under ``prefix``."""
    out = copy.copy(err)
    out.field = prefix + err.field
    out.errors = tuple((prefix + field, reason) for field, reason in err.errors)
    out.args = (out._message(),)
    return out


def _channels(channels: Sequence[int] | None, decoder: Decoder) -> tuple[int, ...] | None:
    if channels is None:
        return None
    if len(channels) != decoder.channels:
        raise SpecError(
            "channels",
            f"decoder {decoder.name} reads {decoder.channels} channel(s); {list(channels)} names "
            f"{len(channels)}",
        )
    return tuple(int(c) for c in channels)


# What a block task holds per voxel at its peak: the prediction read as float32 at worst (4 bytes a
# channel), the mask, labels (uint32) and their remapped copy (uint64), a few index arrays.
BYTES_PER_VOXEL = 32
# The watershed's own copies: the energy (float64 at worst), its markers and output (int64, padded),
# the flood's first reach of each voxel (int32), its levels' ranks (uint8/16), the mask.
WATERSHED_BYTES = 48


def _check_block_memory(block: Sequence[int], decoder: Decoder, limits: Limits) -> None:
    """A block task fits half a worker's memory, and its labels fit uint32 (blocks under 2**31 voxels).
    A watershed's halo may double where its flood cannot settle: the largest halo counts."""
    reach = 2**HALO_DOUBLINGS if decoder.watershed else 1
    grown = [b + 2 * h * reach + 1 for b, h in zip(block, decoder.halo, strict=True)]
    voxels = grown[0] * grown[1] * grown[2]
    need = voxels * (
        4 * decoder.channels
        + BYTES_PER_VOXEL
        + (WATERSHED_BYTES if decoder.watershed or decoder.aff_threshold else 0)
    )
    field = "compute.block_shape"
    if voxels >= 2**31:
        raise SpecError(field, f"a block of {voxels} voxels; at most 2**31 - 1")
    if need > limits.task_bytes:
        raise SpecError(
            field,
            f"a block task needs about {need / 2**30:.1f} GiB; at most {limits.task_bytes / 2**30:.1f} GiB",
        )


def neighbor_refusal(name: str, p: Mapping[str, Any]) -> None:
    """``neighbor`` and ``neighbor_2d`` (PyTC's ``merge_small_objects``, on the volume or slice by
    slice): each small object, in id order, takes the most frequent label in-plane around it (after
    the merges before it), else 0. Under 18 or 26 connectivity, with no dilation, no two objects
    touch in-plane, so every small object becomes 0: ``background`` (``background_2d``), which is
    exact blockwise. Elsewhere the merges form a chain over the whole
    volume that a blockwise run does not reproduce: refused, naming why."""
    dilates = name == "bc_connected" and any(int(s) != 1 for s in p["dilation_struct"])
    if name not in ("binary_connected", "bc_connected") or dilates or p["connectivity"] not in (18, 26):
        raise SpecError(
            "decoder.remove_small_mode",
            f"{p['remove_small_mode']!r} merges each small object into the object most around it, one "
            "after another in id order: a chain over the whole volume that is exact blockwise only "
            "where objects never touch (binary_connected, or bc_connected with dilation_struct "
            f"[1, 1, 1], at connectivity 18 or 26); {name} here lets objects touch; use background or none",
        )


def decoder_of(section: DecoderSection, halo: Sequence[int] | None = None) -> Decoder:
    """The decoder with PyTC's defaults; parameters of other decoders and what is not decoded yet
    are refused, naming ``decoder.<parameter>``."""
    name = section.name
    given = {k: v for k, v in section.model_dump(exclude={"name"}).items() if v is not None}
    if name == "affinity_agglomerate":
        return _agglomerate_decoder(given, halo)
    allowed = DEFAULTS[name]
    for key in given:
        if key not in allowed:
            raise SpecError(
                f"decoder.{key}", f"not a parameter of {name}; its parameters: {', '.join(allowed)}"
            )
    p: Mapping[str, Any] = {**allowed, **given}
    mode = p["remove_small_mode"]
    grows = name in WATERSHED or (name == "bc_connected" and any(int(s) != 1 for s in p["dilation_struct"]))
    if mode in PER_SLICE and grows:
        raise SpecError(
            "decoder.remove_small_mode",
            f"{mode!r} (sizes counted per z slice) is not available yet for {name} with its "
            "dilation or growth; use background or none",
        )
    if mode in ("neighbor", "neighbor_2d"):
        neighbor_refusal(name, p)
    if list(p.get("scale_factors", [1.0, 1.0, 1.0])) != [1.0, 1.0, 1.0]:
        raise SpecError("decoder.scale_factors", "resizing the labels is not available yet; use [1, 1, 1]")
    if name == "affinity_connected" and p["connectivity"] != 6:
        raise SpecError("decoder.connectivity", "affinities join face neighbours only: 6")
    dilation = None
    if name == "bc_connected":
        dilation = triple(p["dilation_struct"])
        if any(s % 2 == 0 for s in dilation):
            raise SpecError(
                "decoder.dilation_struct", f"odd sizes only (a centred box), got {list(dilation)}"
            )
    if halo is not None and name not in WATERSHED:
        raise SpecError("compute.halo", f"only the watershed decoders take a halo, not {name}")
    thresholds = tuple(p[k] for k in THRESHOLDS.get(name, ("thres",)))
    return Decoder(
        name,  # type: ignore[arg-type]  # the names not decoded yet are refused above
        tuple(float(t) for t in thresholds),
        int(p["thres_small"]),
        p["remove_small_mode"],
        p["connectivity"],
        dilation,
        int(p.get("seed_thres", 32)),
        triple(halo) if halo is not None else WATERSHED_HALO if name in WATERSHED else (0, 0, 0),
    )


def _agglomerate_decoder(given: Mapping[str, Any], halo: Sequence[int] | None) -> Decoder:
    from volumes.labels.agglomerate import check

    for key in given:
        if key not in AGGLOMERATE_DEFAULTS:
            raise SpecError(
                f"decoder.{key}",
                f"not a parameter of affinity_agglomerate; its parameters: {', '.join(AGGLOMERATE_DEFAULTS)}",
            )
    p: Mapping[str, Any] = {**AGGLOMERATE_DEFAULTS, **given}
    for problem in check(p["thresholds"], p["aff_threshold"], p["merge_function"]):
        raise SpecError(f"decoder.{problem.split(':', 1)[0]}", problem.split(": ", 1)[1])
    if halo is not None:
        raise SpecError(
            "compute.halo",
            "affinity_agglomerate takes no halo: its fragments are connected components of edges "
            "that each block decides from a few voxels around it, equal to the whole volume's",
        )
    low, high = p["aff_threshold"]
    return Decoder(
        "affinity_agglomerate",
        tuple(float(t) for t in p["thresholds"]),
        0,
        "none",
        6,
        None,
        0,
        (0, 0, 0),
        (float(low), float(high)),
        str(p["merge_function"]),
    )
