"""OME-Zarr ``multiscales``: the one place this project reads and writes them.

Every image this project writes (an output, each of ``pytc synth``'s datasets) is its own group
with its own single ``multiscales`` entry and its levels inside (``<image>/0``, ``<image>/1``, ...):
:func:`image_entry` builds it, :func:`put_image` writes it on the image's group alone, so that the
container's other images (and the container's own attributes) stay as readers saw them.

The OME-NGFF specification puts them in a different place for each zarr format:

- OME-Zarr 0.4, on zarr v2: a list ``multiscales`` at the top of the group's attributes
  (``.zattrs``), each entry carrying ``"version": "0.4"``;
- OME-Zarr 0.5, on zarr v3: the same list under the group attribute ``ome``, whose
  ``"version": "0.5"`` covers every entry (entries carry no version of their own).

Writers (:func:`volumes.output.create_output`, :func:`volumes.output.delete_dataset`,
:func:`volumes.synth.write_synth`) go through :func:`put_multiscale`, which writes the place the
group's format calls for and keeps the group's other entries. Readers are lenient: an entry found in
the other place (0.4 written on a zarr v3 group, as older tools and this project once did) still
gives a voxel size.

Group attributes are read from the metadata file itself, not through zarr: a voxel size is asked for
on every open, and a JSON read is cheaper than opening a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from volumes.files import read_json_object
from volumes.volume import Format, VoxelSize
from volumes.voxel_size import nm_per, spatial

OME_ZARR_V2 = "0.4"  # the OME-Zarr version defined on zarr v2
OME_ZARR_V3 = "0.5"  # the OME-Zarr version defined on zarr v3
SPATIAL_AXES = ("z", "y", "x")


# --- writing ---------------------------------------------------------------------------------------


def multiscale_entry(
    path: str, voxel_size_nm: Sequence[float] | None, *, channel_axis: bool = False
) -> dict[str, Any]:
    """One multiscale of one scale: the array ``path`` (relative to its group), spatial axes z, y, x
    in nm (scale 1 and no unit when the voxel size is unknown), after a channel axis if asked.

    Versionless: :func:`put_multiscale` records the version where the group's format wants it.
    """
    unit = {"unit": "nanometer"} if voxel_size_nm is not None else {}
    axes: list[dict[str, Any]] = [{"name": a, "type": "space", **unit} for a in SPATIAL_AXES]
    scale = [float(v) for v in voxel_size_nm or (1.0, 1.0, 1.0)]
    if channel_axis:
        axes, scale = [{"name": "c", "type": "channel"}, *axes], [1.0, *scale]
    transforms = [{"type": "scale", "scale": scale}]
    return {"name": path, "axes": axes, "datasets": [{"path": path, "coordinateTransformations": transforms}]}


def put_multiscale(group: zarr.Group, path: str, entry: Mapping[str, Any] | None) -> None:
    """Replace (or drop, for None) the multiscale that lists dataset ``path`` in ``group``.

    The new entry goes where the group's zarr format puts OME-Zarr (0.5 under ``ome`` on v3, 0.4 at
    the top on v2); entries of other datasets are kept, in either place, and so is whatever else
    ``ome`` holds. An entry for ``path`` in the other place is dropped too: it described the same
    array. A ``multiscales`` that is not a list is no OME-Zarr, and is replaced.
    """
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    ome: dict[str, Any] = dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else {}
    top = _without(attrs.get("multiscales"), path)
    nested = _without(ome.get("multiscales"), path)
    if entry is not None and group.metadata.zarr_format == 3:
        nested.append(dict(entry))
        ome["version"] = OME_ZARR_V3
    elif entry is not None:
        top.append({"version": OME_ZARR_V2, **entry})
    if nested:
        ome["multiscales"] = nested
    else:
        ome.pop("multiscales", None)
    _update(group, attrs, {"multiscales": top or None, "ome": ome if set(ome) - {"version"} else None})


def _without(entries: Any, path: str) -> list[Any]:
    """``entries`` (a list, else none) but those that list dataset ``path``."""
    return [m for m in entries if path not in _paths(m)] if isinstance(entries, list) else []


def _paths(entry: Any) -> list[Any]:
    datasets = entry.get("datasets") if isinstance(entry, dict) else None
    return [d.get("path") for d in datasets if isinstance(d, dict)] if isinstance(datasets, list) else []


def _update(group: zarr.Group, attrs: Mapping[str, Any], changes: Mapping[str, Any | None]) -> None:
    """Set the ``changes`` that differ from ``attrs``; a None value deletes its key."""
    put = {k: v for k, v in changes.items() if v is not None and v != attrs.get(k)}
    if put:
        group.update_attributes(put)
    for key in (k for k, v in changes.items() if v is None and k in attrs):
        del group.attrs[key]


def image_entry(
    name: str,
    levels: Sequence[Sequence[int]],
    voxel_size_nm: Sequence[float] | None,
    translation_nm: Sequence[float] | None = None,
    *,
    channel_axis: bool = False,
) -> dict[str, Any]:
    """The one multiscale of an image group: level ``i`` is the array ``str(i)``, ``levels[i]`` its
    cumulative downsampling factors (z, y, x; level 0 is (1, 1, 1)). Each level gets its ``scale``
    (voxel size x factor) and ``translation``: the image's origin (``translation_nm``, the centre of
    voxel 0 of level 0) plus half of the voxels it averages, minus half a voxel, so that every
    level's voxel centres lie at the centre of the voxels they summarise."""
    unit = {"unit": "nanometer"} if voxel_size_nm is not None else {}
    axes: list[dict[str, Any]] = [{"name": a, "type": "space", **unit} for a in SPATIAL_AXES]
    base = [float(v) for v in voxel_size_nm or (1.0, 1.0, 1.0)]
    origin = [float(t) for t in translation_nm or (0.0, 0.0, 0.0)]
    if channel_axis:
        axes = [{"name": "c", "type": "channel"}, *axes]
    datasets = []
    for index, factors in enumerate(levels):
        scale = [v * f for v, f in zip(base, factors, strict=True)]
        shift = [t + v * (f - 1) / 2 for t, v, f in zip(origin, base, factors, strict=True)]
        if channel_axis:
            scale, shift = [1.0, *scale], [0.0, *shift]
        transforms = [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]
        datasets.append({"path": str(index), "coordinateTransformations": transforms})
    return {"name": name, "axes": axes, "datasets": datasets}


def put_image(group: zarr.Group, entry: Mapping[str, Any], *, label: bool = False) -> None:
    """Make ``group`` the image ``entry`` describes: its ``multiscales`` is this one entry, where the
    group's zarr format puts OME-Zarr (0.5 under ``ome`` on v3, 0.4 at the top on v2), with
    ``image-label`` beside it for a ``label`` image (OME-NGFF's labels spec). The group's other
    attributes are kept; nothing outside the group is touched."""
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    changes: dict[str, Any]
    if group.metadata.zarr_format == 3:
        ome = dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else {}
        ome |= {"version": OME_ZARR_V3, "multiscales": [dict(entry)]}
        if label:
            ome["image-label"] = {"source": {}}
        changes = {"ome": ome, "multiscales": None}
    else:
        changes = {"multiscales": [{"version": OME_ZARR_V2, **entry}], "ome": None}
        if label:
            changes["image-label"] = {"version": OME_ZARR_V2, "source": {}}
    _update(group, attrs, changes)


# --- reading ---------------------------------------------------------------------------------------


def stored_multiscales(attrs: Mapping[str, Any], fmt: Format) -> list[dict[str, Any]]:
    """The multiscales entries in a group's ``attrs``: the place ``fmt`` calls for first, then the
    other one."""
    ome = attrs.get("ome")
    nested, top = (ome.get("multiscales") if isinstance(ome, dict) else None), attrs.get("multiscales")
    places = (nested, top) if fmt == "zarr3" else (top, nested)
    return [m for place in places if isinstance(place, list) for m in place if isinstance(m, dict)]


def read_voxel_size(array_dir: Path, fmt: Format) -> VoxelSize | None:
    """The scale of ``array_dir`` (nm) in the multiscales of the nearest zarr group that lists it."""
    for parent in array_dir.parents:
        attrs = _group_attrs(parent, fmt)
        if attrs is None:
            return None
        scale = dataset_scale(attrs, fmt, array_dir.relative_to(parent).as_posix())
        if scale is not None:
            return scale
    return None


def read_translation(array_dir: Path, fmt: Format) -> VoxelSize | None:
    """Where voxel 0 of ``array_dir`` lies (nm, z, y, x) by the multiscales of the nearest zarr group
    that lists it: its own and its multiscale's translations; None when no group lists it."""
    for parent in array_dir.parents:
        attrs = _group_attrs(parent, fmt)
        if attrs is None:
            return None
        placed = dataset_placement(attrs, fmt, array_dir.relative_to(parent).as_posix())
        if placed is not None:
            return placed[1]
    return None


def image_levels(group_dir: Path, fmt: Format) -> list[str]:
    """The paths (inside ``group_dir``) of every level of the image there, finest first, as its
    multiscales list them (N5: ``s0``, ``s1``, ... that exist); [] when it is no image."""
    first = image_level0(group_dir, fmt)
    if first is None:
        return []
    if fmt == "n5":
        count = 0
        while (group_dir / f"s{count}").is_dir():
            count += 1
        return [f"s{i}" for i in range(count)]
    (ms, *_) = [m for m in stored_multiscales(_group_attrs(group_dir, fmt) or {}, fmt) if m.get("datasets")]
    paths = [d.get("path") for d in ms["datasets"] if isinstance(d, dict)]
    return [p.strip("/") for p in paths if isinstance(p, str) and p.strip("/") and ".." not in p.split("/")]


def image_level0(group_dir: Path, fmt: Format) -> str | None:
    """The path (inside ``group_dir``) of the first level of the image the zarr group at
    ``group_dir`` is; None when it is no group or holds no multiscales. An N5 group of scale levels
    (``scales`` or ``multiScale`` in its attributes) begins at ``s0``."""
    if fmt == "n5":
        meta = read_json_object(group_dir / "attributes.json")
        multiscale = meta is not None and ("scales" in meta or meta.get("multiScale") is True)
        return "s0" if multiscale and (group_dir / "s0").is_dir() else None
    attrs = _group_attrs(group_dir, fmt)
    return first_level_path(attrs or {}, fmt)


def first_level_path(attrs: Mapping[str, Any], fmt: Format) -> str | None:
    """The path of the first level listed by the multiscales in a group's ``attrs``; None when none
    lists a usable one (empty, or climbing out with ``..``)."""
    for ms in stored_multiscales(attrs, fmt):
        datasets = ms.get("datasets")
        first = datasets[0] if isinstance(datasets, list) and datasets else None
        path = first.get("path") if isinstance(first, dict) else None
        if isinstance(path, str) and path.strip("/") and ".." not in path.split("/"):
            return path.strip("/")
    return None


def dataset_scale(attrs: Mapping[str, Any], fmt: Format, rel_path: str) -> VoxelSize | None:
    """Spatial scale (nm) of the dataset ``rel_path`` in a group's multiscales; None if unlisted."""
    placed = dataset_placement(attrs, fmt, rel_path)
    return None if placed is None else placed[0]


def dataset_placement(
    attrs: Mapping[str, Any], fmt: Format, rel_path: str
) -> tuple[VoxelSize | None, VoxelSize | None] | None:
    """Spatial scale and translation (nm) of the dataset ``rel_path`` in a group's multiscales
    (``index * scale + translation``, the dataset's transforms then its multiscale's); None if
    unlisted."""
    for ms in stored_multiscales(attrs, fmt):
        for ds in ms.get("datasets") or []:
            if not isinstance(ds, dict) or ds.get("path") != rel_path:
                continue
            outer = np.asarray(_scale_of(ms) or [1.0], float)
            scale = np.asarray(_scale_of(ds) or [1.0], float) * outer
            shift = _sized(_translation_of(ds), len(scale)) * outer + _sized(_translation_of(ms), len(scale))
            axes = ms.get("axes") or []
            if axes and all(isinstance(a, dict) for a in axes) and len(axes) == len(scale):
                keep = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
                units = np.asarray([nm_per(axes[i].get("unit")) for i in keep])
                scale, shift = scale[keep] * units, shift[keep] * units
            return spatial(scale.tolist()), spatial(shift.tolist())
    return None


def _group_attrs(directory: Path, fmt: Format) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``directory``, or None when it is not one."""
    if fmt == "zarr3":
        meta = read_json_object(directory / "zarr.json")
        if meta is None or meta.get("node_type") != "group":
            return None
        attrs = meta.get("attributes")
        return attrs if isinstance(attrs, dict) else {}
    return (read_json_object(directory / ".zattrs") or {}) if (directory / ".zgroup").is_file() else None


def _sized(values: list[float] | None, n: int) -> np.ndarray:
    """``values`` as ``n`` floats; zeros when absent or of another length (a malformed one)."""
    return np.asarray(values, float) if values is not None and len(values) == n else np.zeros(n)


def _scale_of(node: Mapping[str, Any]) -> list[float] | None:
    return _transform_of(node, "scale")


def _translation_of(node: Mapping[str, Any]) -> list[float] | None:
    return _transform_of(node, "translation")


def _transform_of(node: Mapping[str, Any], kind: str) -> list[float] | None:
    for transform in node.get("coordinateTransformations") or []:
        if isinstance(transform, dict) and transform.get("type") == kind:
            return [float(s) for s in transform[kind]]
    return None
