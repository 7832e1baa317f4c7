"""What a job shows: its input, predictions and labels, found from its document and opened for viewing.

A job document names its data in a few places, whatever its kind: ``input`` and ``output`` (inference,
segmentation; a segmentation's nested ``inference.output``), ``data.image`` / ``data.label`` /
``data.valid_mask`` (training; of several volumes, ``data.volumes[i]``'s, the first named as those,
the others ``image_1``, ``label_1``, ...). :func:`job_sources` lists them, each confined to the data roots
(paths that no longer resolve inside them are left out) and typed: labels and masks, and a
segmentation's output, are segmentation layers; the rest are images.

:func:`open_layer` reads what a viewer needs from the store's metadata alone (no voxel is read):
two layouts are understood, so that a view works with outputs of every version of the service:

- an OME-Zarr *image group* (``multiscales`` on the group the document names, levels inside it:
  ``0``, ``1``, ...): each level's path, scale and translation come from its transforms;
- an *array* (an output at ``path/dataset``, its OME entry on the parent group): one level; the voxel
  size from the OME metadata, the translation from the job recorded in the array's ``pytc``
  attributes (an output over an ROI lies at the ROI's offset in the input).

``store`` is the container the document names (what a signed link grants); ``node`` the path inside
it of the group or array a viewer opens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.documents.sections import located
from service.errors import SpecError
from volumes.detect import node_kind
from volumes.errors import VolumeError
from volumes.files import read_json_object
from volumes.ome import stored_multiscales
from volumes.open import open_volume
from volumes.voxel_size import nm_per

LayerType = Literal["image", "segmentation"]

# (where in the document, layer name, layer type): the places a document names data
_PLACES: tuple[tuple[tuple[str, ...], str, LayerType], ...] = (
    (("input",), "input", "image"),
    (("inference", "input"), "input", "image"),
    (("inference", "output"), "prediction", "image"),
    (("data", "image"), "image", "image"),
    (("data", "label"), "label", "segmentation"),
    (("data", "valid_mask"), "mask", "segmentation"),
    (("output",), "output", "image"),
)


@dataclass(frozen=True)
class Source:
    """One place a job names data: ``store`` (a container, resolved) and ``node`` inside it."""

    name: str
    store: Path
    node: str
    layer_type: LayerType


@dataclass(frozen=True)
class Level:
    """One resolution level: its array's path in the store, shape (all axes), scale (nm) and
    translation (voxels of level 0), both spatial (z, y, x)."""

    path: str
    shape: tuple[int, ...]
    scale_nm: tuple[float, float, float]
    translation_nm: tuple[float, float, float]


@dataclass(frozen=True)
class Layer:
    """A source opened: its format, whether ``node`` is an OME image group, its levels (finest
    first), dtype and channels (None: no channel axis)."""

    source: Source
    format: str
    image_group: bool
    levels: tuple[Level, ...]
    dtype: str
    channels: int | None
    # an image group's axes as its multiscales names them: (name, type, unit or None)
    ome_axes: tuple[tuple[str, str, str | None], ...] = ()

    @property
    def base(self) -> Level:
        return self.levels[0]


def job_sources(kind: str, spec: Mapping[str, Any], roots: Sequence[Path]) -> list[Source]:
    """The data ``spec`` names, confined to ``roots``; places that do not resolve are left out."""
    found: list[Source] = []
    for place, name, layer_type in (*_PLACES, *_volume_places(spec)):
        section = _at(spec, place)
        if not isinstance(section, Mapping) or not isinstance(section.get("path"), str):
            continue
        dataset = section.get("dataset")
        if name == "output" and kind == "inference":
            dataset = dataset if isinstance(dataset, str) else "pred"
            name = "prediction"
        if name == "output" and kind == "segmentation":
            layer_type, name = "segmentation", "labels"
        try:
            path, node = located(section["path"], dataset if isinstance(dataset, str) else None, roots, name)
        except SpecError:
            continue
        for source in _per_threshold(kind, spec, Source(name, Path(path), node or "", layer_type)):
            if source not in found:
                found.append(source)
    return found


def _per_threshold(kind: str, spec: Mapping[str, Any], source: Source) -> list[Source]:
    """A segmentation's labels, or affinity_agglomerate's labels image per threshold when it has
    several (``<dataset>/threshold_<t>`` in the group ``<dataset>``), named ``labels <t>``."""
    from volumes.labels.agglomerate import threshold_name

    decoder = spec.get("decoder")
    thresholds = decoder.get("thresholds") if isinstance(decoder, Mapping) else None
    if (
        kind != "segmentation"
        or source.name != "labels"
        or not isinstance(decoder, Mapping)
        or decoder.get("name") != "affinity_agglomerate"
        or not isinstance(thresholds, list)
        or len(thresholds) < 2
        or not all(isinstance(t, int | float) for t in thresholds)
    ):
        return [source]
    return [
        Source(
            f"labels {float(t):g}",
            source.store,
            f"{source.node}/{threshold_name(float(t))}",
            source.layer_type,
        )
        for t in thresholds
    ]


def _volume_places(spec: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str, LayerType]]:
    """A training job's several volumes (``data.volumes``): the first as ``image``, ``label``,
    ``mask``, the others as ``image_1``, ``label_1``, ... in their order."""
    volumes = _at(spec, ("data", "volumes"))
    if not isinstance(volumes, list):
        return []
    return [
        (("data", "volumes", i, key), name if i == 0 else f"{name}_{i}", layer_type)
        for i in range(len(volumes))
        for (_, key), name, layer_type in (p for p in _PLACES if p[0][:1] == ("data",))
    ]


def _at(spec: Mapping[str, Any], place: tuple[str | int, ...]) -> Any:
    node: Any = spec
    for key in place:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and key < len(node) else None
        else:
            node = node.get(key) if isinstance(node, Mapping) else None
    return node


def open_layer(source: Source) -> Layer:
    """The layer's metadata; VolumeError when the store holds no readable array there (yet)."""
    directory = source.store / source.node
    kind = node_kind(directory) if directory.is_dir() else None
    if kind is not None and kind[1] == "group" and kind[0] != "n5":
        group = _image_group(source, directory, kind[0])
        if group is not None:
            return group
    volume = open_volume(source.store, source.node or None)
    voxel = volume.voxel_size or (1.0, 1.0, 1.0)
    offset = _recorded_offset(volume.attrs)
    placed = _listed_translation(source, volume.format) or _zyx(
        [o * v for o, v in zip(offset, voxel, strict=True)]
    )
    channels = volume.shape[0] if volume.ndim == 4 else None
    level = Level(source.node, tuple(volume.shape), voxel, placed)
    return Layer(source, volume.format, False, (level,), str(volume.dtype), channels)


def _listed_translation(source: Source, fmt: str) -> tuple[float, float, float] | None:
    """The translation (nm) of the array in the multiscales of the nearest group that lists it
    (an input placed by its OME metadata); None when none lists it or none is given."""
    directory = source.store / source.node
    for parent in directory.parents:
        if not parent.is_relative_to(source.store) or fmt not in ("zarr2", "zarr3"):
            return None
        meta = read_json_object(parent / ("zarr.json" if fmt == "zarr3" else ".zattrs")) or {}
        attrs = meta.get("attributes", {}) if fmt == "zarr3" else meta
        for entry in stored_multiscales(attrs if isinstance(attrs, dict) else {}, fmt):  # type: ignore[arg-type]
            rel = directory.relative_to(parent).as_posix()
            ds = next(
                (d for d in entry.get("datasets") or [] if isinstance(d, dict) and d.get("path") == rel), None
            )
            if ds is None:
                continue
            axes = [a for a in entry.get("axes") or [] if isinstance(a, dict)]
            space = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
            if len(space) != 3:
                return None
            _, shift = _transforms(ds, len(axes))
            top_scale, top_shift = _transforms(entry, len(axes))
            units = [nm_per(axes[i].get("unit")) for i in space]
            places = [(shift[i] * top_scale[i] + top_shift[i]) * u for i, u in zip(space, units, strict=True)]
            return _zyx(places) if any(places) else None
    return None


def _recorded_offset(attrs: Mapping[str, Any]) -> tuple[int, int, int]:
    """Where an output made by this service lies in its input: the ROI's offset of the job its
    ``pytc`` attributes record (zero when none)."""
    record = attrs.get("pytc")
    roi = _at(record, ("job", "input", "roi")) if isinstance(record, Mapping) else None
    offset = roi.get("offset") if isinstance(roi, Mapping) else None
    if isinstance(offset, list) and len(offset) == 3 and all(isinstance(v, int) for v in offset):
        return (offset[0], offset[1], offset[2])
    return (0, 0, 0)


def _image_group(source: Source, directory: Path, fmt: str) -> Layer | None:
    """The layer of an OME image group (the first multiscale of its own attributes), or None."""
    meta = read_json_object(directory / ("zarr.json" if fmt == "zarr3" else ".zattrs")) or {}
    attrs = meta.get("attributes", {}) if fmt == "zarr3" else meta
    entries = stored_multiscales(attrs if isinstance(attrs, dict) else {}, fmt)  # type: ignore[arg-type]
    if not entries:
        return None
    entry = entries[0]
    axes = [a for a in entry.get("axes") or [] if isinstance(a, dict)]
    space = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
    if len(space) != 3:
        return None
    units = [nm_per(axes[i].get("unit")) for i in space]
    levels: list[Level] = []
    for ds in entry.get("datasets") or []:
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            continue
        rel = f"{source.node}/{ds['path']}".strip("/")
        try:
            volume = open_volume(source.store, rel)
        except VolumeError:
            continue
        scale, shift = _transforms(ds, len(axes))
        top_scale, top_shift = _transforms(entry, len(axes))
        sizes = [scale[i] * top_scale[i] * u for i, u in zip(space, units, strict=True)]
        places = [(shift[i] * top_scale[i] + top_shift[i]) * u for i, u in zip(space, units, strict=True)]
        levels.append(Level(rel, tuple(volume.shape), _zyx(sizes), _zyx(places)))
        dtype, ndim = str(volume.dtype), volume.ndim
    if not levels:
        return None
    channels = levels[0].shape[0] if ndim == 4 else None
    named = tuple(
        (
            str(a.get("name", f"d{i}")),
            str(a.get("type", "space")),
            a["unit"] if isinstance(a.get("unit"), str) else None,
        )
        for i, a in enumerate(axes)
    )
    return Layer(source, fmt, True, tuple(levels), dtype, channels, named)


def _zyx(values: Sequence[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _transforms(node: Mapping[str, Any], rank: int) -> tuple[list[float], list[float]]:
    scale, shift = [1.0] * rank, [0.0] * rank
    for transform in node.get("coordinateTransformations") or []:
        if not isinstance(transform, dict):
            continue
        values = transform.get("scale") if transform.get("type") == "scale" else transform.get("translation")
        if isinstance(values, list) and len(values) == rank:
            if transform.get("type") == "scale":
                scale = [float(v) for v in values]
            elif transform.get("type") == "translation":
                shift = [float(v) for v in values]
    return scale, shift


def open_layers(sources: Sequence[Source]) -> tuple[list[Layer], list[str]]:
    """The layers that open, and a note for each source that does not (not written yet, HDF5)."""
    layers, notes = [], []
    for source in sources:
        try:
            layers.append(open_layer(source))
        except (VolumeError, OSError, ValueError) as err:
            notes.append(f"{source.name}: {err}")
    return layers, notes
