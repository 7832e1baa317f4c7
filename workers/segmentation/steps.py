"""The segmentation run's steps with their reads and writes: what a Dask task (or the serial loop) runs.

Each step of one block (or each merge, once) reads what the steps before it left in the run folder
and writes its own files atomically; the driver records it done once its task returned (the run
folder's ledger, :mod:`workers.segmentation.rundir`), so a run killed at any moment resumes from
the record: a step is redone unless it is recorded. The arrays of
:mod:`volumes.labels.blockwise` are kept as::

    labels/<b>.npy.blosc  faces/<b>.npz  pieces/<b>.npz     label step (local labels and their renaming
    slices/<b>.npz                                          to the pieces' numbers where specks were
                                                            dropped, faces, pieces; per (label, z
                                                            slice), for background_2d)
    links/<b>.npz                                           link step
    luts/<b>.npy  objects.npz  final.npy  numbered.json     merges (the written numbers per block / object;
    luts/<b>.drops.npy                                      the (label, z) pairs the per-slice filter zeroes)
    strips/<b>.npz                                          bc_connected: the layers of local labels
    dilated/<b>.npy.blosc  parts/<b>.npz                    its dilation reads of this block; the
                                                            block's dilated labels (ranks; their
                                                            numbers are the parts' ``names``)
    ranked.zarr  dilated.zarr  parts/<b>.npz                watershed decoders: numbered seeds and
                                                            the grown labels
    fragments.npz  edges/<b>.npz  graph.json                affinity_agglomerate: the fragments'
    objects/<i>.npz                                         statistics (labels/ and luts/ hold the
                                                            fragments), their region graph, and per
                                                            threshold i the written number of each
                                                            fragment and the segments' statistics

The labels image itself is created by the last merge (its dtype, uint32 or uint64, is known then),
with all its levels (:func:`label_levels`); the write step fills a block's chunks of level 0, the
block being a multiple of the chunks; the pyramid stage (:mod:`workers.pyramid`, rule ``mode``)
fills the coarser levels after every block is written.

``affinity_agglomerate`` with several thresholds writes one labels image per threshold
(:func:`images`): ``<dataset>/threshold_<t>``, each as above with its own table
(``<dataset>/threshold_<t>.objects.csv``), inside the group ``<dataset>``, whose attributes list
them (OME-Zarr's ``labels``) and carry the job's identity; all from one fragment pass and one
region graph, each block's write step writing every image.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from volumes.box import Box
from volumes.detect import node_kind
from volumes.errors import VolumeNotFoundError
from volumes.files import atomic_write, read_json, read_json_object, write_json_atomic
from volumes.labels.agglomerate import (
    FRAGMENT_DECODER,
    Edges,
    agglomerate_graph,
    agglomeration_of,
    as_affinities,
    block_edges,
    edge_mask_over,
    merge_edges,
    segments,
    threshold_name,
)
from volumes.labels.blockcc import Pieces
from volumes.labels.blockwise import (
    Grid,
    dilate_block,
    dilates_by_strips,
    drop_slices,
    grow_step,
    label_step,
    link_step,
    merge_step,
    objects_from_parts,
    prunes,
    read_box,
    rename,
    slice_step,
    through,
)
from volumes.labels.decoders import Decoder
from volumes.labels.merge import Objects, final_ids, label_dtype, narrow_dtype
from volumes.labels.watershed import kept_seeds
from volumes.open import open_volume
from volumes.output import N5_VERSION, level_path
from volumes.output import create_output as create_image
from volumes.pyramid import Factors, pyramid_factors
from volumes.volume import Volume
from workers.confine import confined
from workers.errors import BlockCancelledError
from workers.runtime.allocator import tune_allocator
from workers.segmentation.job import SegmentationJob, read_prediction
from workers.segmentation.rundir import SegRunDir
from workers.version import package_version

Index = tuple[int, ...]
LABEL, LINK, RANK, DILATE, WRITE, EDGES = 1, 2, 3, 4, 5, 6
NUMBER, SIZES, AGGLOMERATE = 10, 11, 12
ONCE: Index = (0, 0, 0)
LABEL_SCRATCH_CODEC = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)  # a block's local labels
OUTPUT_ATTRS_KEY = "pytc"


@dataclass(frozen=True)
class Plan:
    """One run of a job over an input of ``shape`` (C, Z, Y, X): what every task carries."""

    job: SegmentationJob
    shape: tuple[int, ...]
    layout_key: str
    attempt: str = ""

    @property
    def grid(self) -> Grid:
        spatial = tuple(self.shape[1:])
        return Grid(spatial, self.job.block_for(spatial))

    @property
    def agglomerates(self) -> bool:
        return self.job.decoder.name == "affinity_agglomerate"

    @property
    def decoder(self) -> Decoder:
        """What labels the blocks: the job's decoder, or affinity_agglomerate's fragments'
        (connected components of the steepest edges, :func:`volumes.labels.agglomerate.steepest_edges`)."""
        if self.agglomerates:
            return FRAGMENT_DECODER
        return self.job.decoder

    @property
    def dilates(self) -> bool:
        """A second stage over numbered labels with a halo: bc_connected's dilation, or the
        watershed decoders' growth from their seeds (affinity_agglomerate's fragments too)."""
        return self.decoder.dilation is not None or self.decoder.watershed

    def read_prediction(self, box: Box) -> np.ndarray:
        """The decoder's channels over a (z, y, x) box; affinity_agglomerate's fragments read their
        edge mask there, made from the affinities over the box and a few voxels around it."""
        source = open_volume(self.job.input.path, self.job.input.dataset)
        if self.agglomerates:
            aff = agglomeration_of(self.job.decoder).aff_threshold
            return edge_mask_over(lambda b: read_prediction(self.job, source, b), box, self.grid.shape, aff)
        return read_prediction(self.job, source, box)  # the job's ``channels``, in order

    def images(self) -> list[tuple[str, float | None]]:
        """The labels images this job writes: (dataset, threshold). One (``output.dataset``, the
        threshold for affinity_agglomerate, else None), or affinity_agglomerate's one per threshold
        inside the group ``output.dataset``."""
        dataset = self.job.output.dataset
        if not self.agglomerates:
            return [(dataset, None)]
        thresholds = self.job.decoder.thresholds
        if len(thresholds) == 1:
            return [(dataset, thresholds[0])]
        return [(f"{dataset}/{threshold_name(t)}", t) for t in thresholds]

    @property
    def grouped(self) -> bool:
        """Several images in the group ``output.dataset`` (affinity_agglomerate, several thresholds)."""
        return len(self.images()) > 1

    @property
    def run_dir(self) -> SegRunDir:
        return SegRunDir.for_output(self.job.output.path, self.job.output.dataset, self.layout_key)

    def block_steps(self) -> tuple[int, ...]:
        if self.agglomerates:
            return (LABEL, LINK, EDGES, WRITE)
        if self.by_strips:  # bc_connected: no numbered copy of the volume between merge and dilation
            return (LABEL, LINK, DILATE, WRITE)
        return (LABEL, LINK, RANK, DILATE, WRITE) if self.dilates else (LABEL, LINK, WRITE)

    @property
    def by_strips(self) -> bool:
        """bc_connected's dilation: each block dilated from its own local labels and its
        neighbours' strips (:func:`volumes.labels.blockwise.dilate_block`)."""
        return not self.agglomerates and dilates_by_strips(self.decoder)

    def file(self, folder: str, index: Index, suffix: str) -> Path:
        return self.run_dir.root / folder / f"{'_'.join(map(str, index))}{suffix}"


def run_step(plan: Plan, step: int, index: Index) -> int:
    """Run one step of one block (or a merge, ``index`` :data:`ONCE`); returns the step. The
    driver records it done once this returned (:class:`workers.segmentation.rundir.SegLedger`)."""
    tune_allocator()  # a block's arrays (tens of MiB) reused from step to step, not faulted in afresh
    run_dir = plan.run_dir
    confined(run_dir.root, plan.job.data_roots)
    if run_dir.is_cancelled():
        raise BlockCancelledError(f"job cancelled before step {step} of block {index}")
    STEPS[step](plan, index)
    return step


def _label(plan: Plan, index: Index) -> None:
    decoder, grid = plan.decoder, plan.grid
    pred = plan.read_prediction(read_box(decoder, grid, index))
    pruned = not plan.agglomerates and prunes(decoder, plan.job.output.relabel)
    done = label_step(decoder, grid, index, pred, pruned)
    _save_packed(plan.file("labels", index, ".npy.blosc"), done.labels, done.renaming)
    _save_npz(plan.file("faces", index, ".npz"), {k: _narrow(v) for k, v in done.faces.items()})
    _save_npz(plan.file("pieces", index, ".npz"), done.pieces.arrays())
    if done.slices is not None:
        _save_npz(plan.file("slices", index, ".npz"), done.slices)
    if done.strips is not None:
        _save_npz(plan.file("strips", index, ".npz"), done.strips)


def _narrow(layer: np.ndarray) -> np.ndarray:
    """A face's labels in the narrowest unsigned type that holds them (a 256x256 face of uint32
    labels is 256 KiB; of a block's few hundred labels, 64 or 128 KiB): the link step reads them
    as int64 (:func:`volumes.labels.blockcc.links`). Other layers (affinities' bool edges) as
    they are."""
    return _narrowest(layer) if layer.dtype.kind == "u" else layer


def _narrowest(labels: np.ndarray) -> np.ndarray:
    """``labels`` (non-negative) in the narrowest unsigned type that holds their largest value."""
    return labels.astype(narrow_dtype(int(labels.max(initial=0))), copy=False)


def _load_npz(plan: Plan, folder: str, index: Index) -> dict[str, np.ndarray]:
    with np.load(plan.file(folder, index, ".npz")) as data:
        return {k: data[k] for k in data.files}


class _Arrays(Mapping[str, np.ndarray]):
    """An ``.npz`` file's arrays, each read on first use: a link step reads one face of each of
    its (up to 13) neighbours, not their six faces and edges."""

    def __init__(self, path: Path) -> None:
        self._file = np.load(path)
        self._read: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._read:
            self._read[key] = self._file[key]
        return self._read[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.files)

    def __len__(self) -> int:
        return len(self._file.files)

    def close(self) -> None:
        self._file.close()


def _link(plan: Plan, index: Index) -> None:
    opened: list[_Arrays] = []

    def faces_of(i: Index) -> _Arrays:
        opened.append(_Arrays(plan.file("faces", i, ".npz")))
        return opened[-1]

    try:
        found = link_step(plan.decoder, plan.grid, index, faces_of)
    finally:
        for arrays in opened:
            arrays.close()
    others = [np.repeat(np.array([other]), a.shape[0], axis=0) for other, a, _ in found]
    _save_npz(
        plan.file("links", index, ".npz"),
        {
            "other": np.concatenate([*others, np.zeros((0, 3), np.int64)]),
            "mine": np.concatenate([*(a for _, a, _ in found), np.zeros(0, np.int64)]),
            "theirs": np.concatenate([*(b for _, _, b in found), np.zeros(0, np.int64)]),
        },
    )


def _links_of(plan: Plan, index: Index) -> list[tuple[Index, np.ndarray, np.ndarray]]:
    with np.load(plan.file("links", index, ".npz")) as data:
        other, mine, theirs = data["other"], data["mine"], data["theirs"]
    out = []
    for row in np.unique(other, axis=0):  # the (at most 13) neighbours, not a tuple per link in Python
        nb = tuple(int(v) for v in row)
        sel = np.all(other == row, axis=1)
        out.append((nb, mine[sel], theirs[sel]))
    return out


def _number(plan: Plan, index: Index) -> None:
    blocks = list(plan.grid.indices())
    pieces_of = {}
    for i in blocks:
        with np.load(plan.file("pieces", i, ".npz")) as data:
            pieces_of[i] = Pieces(**{k: data[k] for k in data.files})
    numbered = merge_step(plan.grid, pieces_of, {i: _links_of(plan, i) for i in blocks})
    k = numbered.objects.n
    if plan.agglomerates:  # the fragments' numbers and statistics; the output comes after the merging
        _mkdir(plan, "luts")
        for i in blocks:
            np.save(plan.file("luts", i, ".npy"), numbered.lut[i])
        o = numbered.objects
        _save_npz(
            plan.run_dir.root / "fragments.npz",
            {"count": o.count, "first": o.first, "lo": o.lo, "hi": o.hi, "sums": o.sums},
        )
        return
    if plan.dilates:
        _mkdir(plan, "luts")
        kept = np.arange(k + 1)
        if plan.decoder.watershed:  # whole seeds under seed_thres are no seeds
            kept = kept_seeds(plan.decoder, numbered.objects.count)
        for i in blocks:
            np.save(plan.file("luts", i, ".npy"), kept[numbered.lut[i]])
        for name in () if plan.by_strips else ("ranked", "dilated"):
            zarr.create_array(
                str(plan.run_dir.root / f"{name}.zarr"),
                shape=plan.grid.shape,
                chunks=plan.job.output.chunks,
                dtype=label_dtype(k),
                fill_value=0,
                zarr_format=2,
                compressors=LABEL_SCRATCH_CODEC,  # scratch: lz4, about 4 times zstd's speed both ways
                overwrite=True,
            )
        write_json_atomic(plan.run_dir.root / "numbered.json", {"objects": k})
        return
    objects = numbered.objects
    _mkdir(plan, "luts")
    if plan.job.decoder.per_slice:  # the per-slice size filter: the pairs to zero, per block
        objects, drops = slice_step(
            plan.job.decoder, plan.grid, numbered, lambda i: _load_npz(plan, "slices", i)
        )
        for i in blocks:
            np.save(plan.file("luts", i, ".drops.npy"), drops[i])
    final = final_ids(plan.job.decoder, objects, plan.job.output.relabel, _voxels(plan))
    for i in blocks:
        np.save(plan.file("luts", i, ".npy"), final[numbered.lut[i]])
    _finish_merge(plan, objects, final)


def _voxels(plan: Plan) -> int:
    return int(np.prod(plan.grid.shape, dtype=np.int64))


def _mkdir(plan: Plan, folder: str) -> None:
    (plan.run_dir.root / folder).mkdir(parents=True, exist_ok=True)


def _finish_merge(plan: Plan, objects: Objects, final: np.ndarray) -> None:
    """Keep the objects and their written numbers, and create the labels array."""
    arrays = {"count": objects.count, "first": objects.first, "lo": objects.lo, "hi": objects.hi}
    _save_npz(plan.run_dir.root / "objects.npz", {**arrays, "sums": objects.sums, "final": final})
    create_output(plan, label_dtype(int(final.max(initial=0))))


def create_output(plan: Plan, dtype: np.dtype) -> None:
    """The labels images with the job's identity (not yet complete), unless this run made them
    already: placed where the prediction lies (its voxel size and translation), with their pyramid's
    levels; several (affinity_agglomerate's thresholds) inside their group, made first."""
    job = plan.job
    source = open_volume(job.input.path, job.input.dataset)
    job.output_node()
    if plan.grouped:
        record = group_record(plan)
        if record is None or record.get("layout_key") != plan.layout_key:
            write_group(plan, complete=False)
    for dataset, threshold in plan.images():
        if Path(job.output.path, dataset).exists() and _own_image(plan, dataset):
            continue
        record = {
            "kind": "segmentation",
            "layout_key": plan.layout_key,
            "complete": False,
            "job": json.loads(job.document),
            "version": package_version(),
        }
        if threshold is not None:
            record["threshold"] = threshold
        out = job.output
        create_image(
            out.path, dataset, out.format, plan.grid.shape, dtype, out.chunks, source.voxel_size,
            {OUTPUT_ATTRS_KEY: record}, translation=source.translation, levels=label_levels(plan, source),
            label=True,
        )  # fmt: skip


def _own_image(plan: Plan, dataset: str) -> bool:
    """True when ``dataset`` is this run's whole image; a half-made one of this run (killed between
    its level 0 and its metadata) is deleted, to be made again."""
    out = plan.job.output
    try:
        existing = open_volume(out.path, dataset)
    except VolumeNotFoundError:
        level0 = open_volume(out.path, level_path(out.format, dataset, 0))  # else not ours: raises
        if not made_by(plan, level0.attrs, level0.shape):
            raise
        plan.job.output_node()
        shutil.rmtree(Path(out.path, dataset))
        return False
    return made_by(plan, existing.attrs, existing.shape)


def group_record(plan: Plan) -> dict[str, Any] | None:
    """The job record (``pytc``) on the group ``output.dataset``, None if it has none or is no group."""
    out = plan.job.output
    node = Path(out.path, out.dataset)
    kind = node_kind(node) if node.is_dir() else None
    if out.format == "n5" and (kind is None or kind[0] == "n5"):  # an N5 group below the root: no "n5" key
        meta = read_json_object(node / "attributes.json") or {}
        if {"dimensions", "dataType"} <= meta.keys():
            return None
        attrs = meta
    elif kind is None or kind[1] != "group":
        return None
    else:
        attrs = dict(zarr.open_group(str(node), mode="r", zarr_format=3 if kind[0] == "zarr3" else 2).attrs)
    record = attrs.get(OUTPUT_ATTRS_KEY)
    return record if isinstance(record, dict) else None


def write_group(plan: Plan, complete: bool, extra: dict[str, Any] | None = None) -> None:
    """The group ``output.dataset`` of several labels images: its ``labels`` list (OME-Zarr's, under
    ``ome`` on zarr v3) and the job's identity, created or updated."""
    job, out = plan.job, plan.job.output
    names = [dataset.rpartition("/")[2] for dataset, _ in plan.images()]
    record = {
        "kind": "segmentation",
        "layout_key": plan.layout_key,
        "complete": complete,
        "job": json.loads(job.document),
        "version": package_version(),
        "images": [{"dataset": d, "threshold": t} for d, t in plan.images()],
        **(extra or {}),
    }
    job.output_node()
    if out.format == "n5":
        root = Path(out.path)
        root.mkdir(parents=True, exist_ok=True)
        top = read_json_object(root / "attributes.json") or {}
        if "n5" not in top:
            write_json_atomic(root / "attributes.json", {**top, "n5": N5_VERSION})
        (root / out.dataset).mkdir(parents=True, exist_ok=True)
        meta = read_json_object(root / out.dataset / "attributes.json") or {}
        write_json_atomic(
            root / out.dataset / "attributes.json", {**meta, "labels": names, OUTPUT_ATTRS_KEY: record}
        )
        return
    v3 = out.format == "zarr3"
    group = zarr.open_group(out.path, path=out.dataset, mode="a", zarr_format=3 if v3 else 2)
    listing = {"ome": {"version": "0.5", "labels": names}} if v3 else {"labels": names}
    group.attrs.update({**listing, OUTPUT_ATTRS_KEY: record})


def label_levels(plan: Plan, source: Volume) -> tuple[Factors, ...]:
    """The labels image's levels: its pyramid's (``output.pyramid``), else level 0 alone."""
    if not plan.job.output.pyramid:
        return ((1, 1, 1),)
    return pyramid_factors(plan.grid.shape, plan.job.output.chunks, source.voxel_size)


def made_by(plan: Plan, attrs: dict[str, Any], shape: tuple[int, ...]) -> bool:
    record = attrs.get(OUTPUT_ATTRS_KEY)
    same = isinstance(record, dict) and record.get("layout_key") == plan.layout_key
    return bool(same) and tuple(shape) == tuple(plan.grid.shape)


def _rank(plan: Plan, index: Index) -> None:
    labels = _load_packed(plan.file("labels", index, ".npy.blosc"))
    lut = np.load(plan.file("luts", index, ".npy"))
    ranked = zarr.open_array(str(plan.run_dir.root / "ranked.zarr"), mode="r+")
    ranked[plan.grid.box(index).slices()] = lut.astype(ranked.dtype)[labels]  # no int64 block between


def _dilate(plan: Plan, index: Index) -> None:
    decoder, grid = plan.decoder, plan.grid
    names = ("ids", "count", "first", "lo", "hi", "sums")
    if plan.by_strips:
        done = dilate_block(
            decoder,
            grid,
            index,
            _load_packed(plan.file("labels", index, ".npy.blosc")),
            lambda i: _load_npz(plan, "strips", i),
            lambda i: np.load(plan.file("luts", i, ".npy")),
        )
        _save_packed(plan.file("dilated", index, ".npy.blosc"), done.core)
        _save_npz(
            plan.file("parts", index, ".npz"),
            {**dict(zip(names, done.part, strict=True)), "names": done.names},
        )
        return
    ranked = zarr.open_array(str(plan.run_dir.root / "ranked.zarr"), mode="r")  # the watershed decoders

    def read(box: Box) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(ranked[box.slices()]), plan.read_prediction(box)

    core, part = grow_step(decoder, grid, index, read)
    dilated = zarr.open_array(str(plan.run_dir.root / "dilated.zarr"), mode="r+")
    dilated[grid.box(index).slices()] = core
    _save_npz(plan.file("parts", index, ".npz"), dict(zip(names, part, strict=True)))


def _sizes(plan: Plan, index: Index) -> None:
    k = int((read_json(plan.run_dir.root / "numbered.json") or {})["objects"])
    parts = []
    for i in plan.grid.indices():
        with np.load(plan.file("parts", i, ".npz")) as data:
            parts.append(tuple(data[n] for n in ("ids", "count", "first", "lo", "hi", "sums")))
    objects = objects_from_parts(k, parts)
    _finish_merge(plan, objects, final_ids(plan.job.decoder, objects, plan.job.output.relabel, _voxels(plan)))


def _fragments(plan: Plan, index: Index) -> np.ndarray:
    """affinity_agglomerate: a block's fragments (their global numbers, uint64)."""
    labels = _load_packed(plan.file("labels", index, ".npy.blosc"))
    return np.load(plan.file("luts", index, ".npy")).astype(np.uint64)[labels]


def _edges(plan: Plan, index: Index) -> None:
    """affinity_agglomerate: the region graph's edges of a block, from its fragments, its lower face
    neighbours' last layer of fragments (their faces, numbered) and its affinities."""
    grid = plan.grid
    box = grid.box(index)
    low = [1 if o > 0 else 0 for o in box.offset]
    fragments = np.zeros(tuple(n + lo for n, lo in zip(box.shape, low, strict=True)), np.uint64)
    fragments[tuple(slice(lo, None) for lo in low)] = _fragments(plan, index)
    for a in range(3):
        if not low[a]:
            continue
        below = tuple(i - (b == a) for b, i in enumerate(index))
        face = _load_npz(plan, "faces", below)[f"hi{a}"]
        lut = np.load(plan.file("luts", below, ".npy")).astype(np.uint64)
        layer = tuple(slice(0, 1) if b == a else slice(low[b], None) for b in range(3))
        fragments[layer] = np.expand_dims(lut[face], a)
    source = open_volume(plan.job.input.path, plan.job.input.dataset)
    affs = as_affinities(read_prediction(plan.job, source, box))
    edges = block_edges(fragments, affs, low)
    _mkdir(plan, "edges")
    names = ("u", "w", "count", "total", "top")
    _save_npz(plan.file("edges", index, ".npz"), {n: getattr(edges, n) for n in names})


def _agglomerate(plan: Plan, index: Index) -> None:
    """affinity_agglomerate, once: the fragments' statistics and the whole region graph (a row per
    edge and per fragment, never voxels), merged at each of the job's thresholds in turn; per
    threshold ``i``, ``objects/<i>.npz``: the written number of each fragment ("final"), of each
    segment ("table_final", for the table) and the segments' statistics. Then the labels images."""
    with np.load(plan.run_dir.root / "fragments.npz") as data:
        fragments = Objects(data["count"], data["first"], data["lo"], data["hi"], data["sums"])
    k = fragments.n
    graphs = []
    for i in plan.grid.indices():
        with np.load(plan.file("edges", i, ".npz")) as data:
            graphs.append(Edges(*(data[n] for n in ("u", "w", "count", "total", "top"))))
    edges = merge_edges(graphs)
    merges = agglomerate_graph(edges, agglomeration_of(plan.job.decoder))
    _mkdir(plan, "objects")
    top = 0
    for t in range(len(merges.thresholds)):
        per_fragment, objects, written = segments(merges, t, k, fragments, plan.job.output.relabel)
        arrays = {"count": objects.count, "first": objects.first, "lo": objects.lo, "hi": objects.hi}
        _save_npz(
            plan.run_dir.root / "objects" / f"{t}.npz",
            {**arrays, "sums": objects.sums, "final": per_fragment, "table_final": written},
        )
        top = max(top, int(written.max(initial=0)))
    write_json_atomic(
        plan.run_dir.root / "graph.json",
        {"fragments": k, "edges": edges.n, "graph_bytes": edges.nbytes + 8 * (k + 1) * 3},
    )
    create_output(plan, label_dtype(top))


def objects_file(plan: Plan, image: int) -> Path:
    """Where the merge left image ``image``'s objects and written numbers."""
    if plan.agglomerates:
        return plan.run_dir.root / "objects" / f"{image}.npz"
    return plan.run_dir.root / "objects.npz"


def _write(plan: Plan, index: Index) -> None:
    box = plan.grid.box(index)
    if plan.agglomerates:  # every threshold's image from the block's fragments
        fragments = _fragments(plan, index)
        for i, (dataset, _) in enumerate(plan.images()):
            out = open_volume(plan.job.output.path, dataset, mode="r+")
            plan.job.output_node()
            with np.load(objects_file(plan, i)) as data:
                final = np.asarray(data["final"])
            out.write(box, final.astype(out.dtype)[fragments])
        return
    out = open_volume(plan.job.output.path, plan.job.output.dataset, mode="r+")
    plan.job.output_node()
    if plan.by_strips:  # the block's dilated ranks, named by its parts' global numbers
        core = _load_packed(plan.file("dilated", index, ".npy.blosc"))
        with np.load(plan.file("parts", index, ".npz")) as parts:
            written = _final(plan)[parts["names"]].astype(out.dtype)
        data = written[core]
    elif plan.dilates:
        final = _final(plan)
        dilated = zarr.open_array(str(plan.run_dir.root / "dilated.zarr"), mode="r")
        data = final.astype(out.dtype)[np.asarray(dilated[box.slices()])]
    else:  # the pieces' written numbers, as a table of the labelling's numbers: one pass over the block
        labels, renaming = _load_labelling(plan.file("labels", index, ".npy.blosc"))
        lut = np.load(plan.file("luts", index, ".npy")).astype(out.dtype)
        data = np.take(through(lut, renaming), labels)
        if plan.job.decoder.per_slice:
            drops = np.load(plan.file("luts", index, ".drops.npy"))
            data = drop_slices(rename(labels, renaming), drops, data)
    out.write(box, data)


def _final(plan: Plan) -> np.ndarray:
    with np.load(plan.run_dir.root / "objects.npz") as data:
        return np.asarray(data["final"])


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    data = buffer.getvalue()
    atomic_write(path, lambda h: h.write(data))


def _save_packed(path: Path, labels: np.ndarray, renaming: np.ndarray | None = None) -> None:
    """A block's labels (1..n), in the narrowest unsigned type that holds n, Blosc-lz4'ed
    with byte shuffling: about 4 times faster both ways than the float scratch's bit-shuffled
    zstd, for twice the bytes (0.4 MB for 64x256x256 voxels and 200 labels), and kept only until the
    run completes. Old files (uint32, zstd) still load: the ``.npy`` header names the type and
    Blosc's header its compressor. ``renaming`` (the label step's table from the labelling's
    numbers to the pieces', :attr:`volumes.labels.blockwise.Labelled.renaming`) follows the labels
    as a second ``.npy`` in the same file: one file, written whole or not at all."""
    buffer = io.BytesIO()
    np.save(buffer, _narrowest(labels), allow_pickle=False)
    if renaming is not None:
        np.save(buffer, renaming, allow_pickle=False)
    packed = bytes(LABEL_SCRATCH_CODEC.encode(buffer.getbuffer()))
    atomic_write(path, lambda h: h.write(packed))


def _load_labelling(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A block's labels and their renaming (None where the file holds none: see :func:`_save_packed`)."""
    data = io.BytesIO(LABEL_SCRATCH_CODEC.decode(path.read_bytes()))
    labels = np.load(data, allow_pickle=False)
    renaming = np.load(data, allow_pickle=False) if data.tell() < len(data.getbuffer()) else None
    return labels, renaming


def _load_packed(path: Path) -> np.ndarray:
    """A block's labels in the pieces' numbers (renamed where the file holds a renaming)."""
    return rename(*_load_labelling(path))


STEPS = {
    LABEL: _label,
    LINK: _link,
    NUMBER: _number,
    RANK: _rank,
    DILATE: _dilate,
    SIZES: _sizes,
    WRITE: _write,
    EDGES: _edges,
    AGGLOMERATE: _agglomerate,
}
