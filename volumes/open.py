"""Opening a volume: :func:`open_volume` tells the format from the store itself and picks its backend.

The format comes from the store's metadata files (:mod:`volumes.detect`) or HDF5's and TIFF's
signatures, never from the name alone; only a TileDataset, a plain JSON file, is known by its
``.json`` suffix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from volumes.backends.hdf5 import open_hdf5
from volumes.backends.n5 import N5Volume
from volumes.backends.png import has_pattern, is_png_stack, open_png
from volumes.backends.precomputed import PrecomputedVolume, locate
from volumes.backends.tiff import is_tiff, open_tiff
from volumes.backends.tiles import open_tiles
from volumes.backends.zarr_array import Zarr2Volume, ZarrVolume
from volumes.detect import clean_dataset, is_precomputed_folder, list_datasets, node_kind
from volumes.errors import VolumeFormatError, VolumeNotFoundError
from volumes.ome import image_level0
from volumes.remote import url_image_level0, url_node_kind
from volumes.urls import is_url, join_url, normalise_url, url_exists
from volumes.volume import Format, Mode, Volume

# The backends of the stores that are directories, by the format their metadata files name.
_DIRECTORY_BACKENDS: dict[Format, Callable[[str, str | None, Mode], Volume]] = {
    "zarr2": Zarr2Volume,
    "zarr3": ZarrVolume,
    "n5": N5Volume,
}


def open_volume(
    path: str | os.PathLike[str], dataset: str | None = None, mode: Mode = "r", *, labels: bool = False
) -> Volume:
    """Open the array ``dataset`` inside the container at ``path`` (or ``path`` itself when None).

    ``dataset`` may name an image instead (an OME-Zarr group with ``multiscales``, or an N5 group
    of scale levels ``s0``, ``s1``, ...): its first level, the full resolution, is opened, and the
    volume's ``dataset`` is that level's path (``pred/0``).

    ``labels``: the volume holds ids or masks, so whatever it resamples on read (a TileDataset's
    ``tile_ratio``) is nearest-neighbour, never interpolated.

    Raises VolumeNotFoundError for a missing path or dataset (listing the datasets that exist) and
    VolumeFormatError for a store that is neither zarr v2/v3, N5, neuroglancer precomputed (a folder
    with an ``info`` file; ``dataset`` names a scale by key or index), HDF5, a TIFF stack (no
    dataset: the file's first series), a PNG stack (a ``.png`` file or pattern of files, such as
    ``slices/*.png``: sorted, as PyTC's ``readvol``) nor a TileDataset ``.json``.
    """
    if is_url(path):  # an object store: s3://bucket/key
        return open_url_volume(str(path), clean_dataset(dataset), mode)
    root, name = Path(path), clean_dataset(dataset)
    if is_png_stack(str(path)) and (has_pattern(str(path)) or root.is_file()):
        return open_png(str(path), name, mode)  # a pattern of files, or one: PyTC's readvol by suffix
    if not root.exists():
        raise VolumeNotFoundError(f"no volume at {root}: the path does not exist")
    if root.is_file() and root.suffix.lower() == ".json":
        return open_tiles(root, name, mode, labels=labels)
    if root.is_file() and is_tiff(root):
        return open_tiff(root, name, mode)
    if root.is_file():
        return open_hdf5(root, name, mode)
    if is_precomputed_folder(root) or (name and locate(str(root), name)):  # scales: by key or index
        return PrecomputedVolume(str(root), name, mode)
    node = root / name if name else root
    kind = node_kind(node) if node.is_dir() else None
    image = (kind is None or kind[1] == "group") and node.is_dir()
    if image and (level := image_level0(node, kind[0] if kind else "n5")) is not None:
        name, node = f"{name}/{level}" if name else level, node / level  # an image: its full resolution
        kind = node_kind(node) if node.is_dir() else None
    if kind is not None and kind[1] == "array" and kind[0] in _DIRECTORY_BACKENDS:
        return _DIRECTORY_BACKENDS[kind[0]](str(root), name, mode)
    datasets = list_datasets(root)
    if node_kind(root) is None and not datasets:
        raise VolumeFormatError(
            f"{root} is not a volume store: no zarr.json, .zarray/.zgroup, N5 attributes.json or "
            "precomputed info there"
        )
    raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {datasets}")


def open_url_volume(url: str, dataset: str | None, mode: Mode) -> Volume:
    """The array ``dataset`` of the container at ``url``; the errors of :func:`volumes.open_volume`."""
    root = normalise_url(url)
    if locate(root, dataset) is not None:  # a precomputed volume (or an image in a container)
        return PrecomputedVolume(root, dataset, mode)
    kind = url_node_kind(join_url(root, dataset))
    if kind is None or kind[1] == "group":  # an image: its full resolution (an N5 image group has
        level = url_image_level0(join_url(root, dataset), kind[0] if kind else "n5")  # no "n5" key)
        if level is not None:
            dataset = f"{dataset}/{level}" if dataset else level
            kind = url_node_kind(join_url(root, dataset))
    if kind is not None and kind[1] == "array" and kind[0] in _DIRECTORY_BACKENDS:
        return _DIRECTORY_BACKENDS[kind[0]](root, dataset, mode)
    if not url_exists(root):
        raise VolumeNotFoundError(f"no volume at {root}: nothing is stored there")
    if kind is None and url_node_kind(root) is None:
        raise VolumeFormatError(
            f"{root} is not a volume store: no zarr.json, .zarray/.zgroup or N5 attributes.json"
        )
    raise VolumeNotFoundError(f"no dataset {dataset!r} in {root}")
