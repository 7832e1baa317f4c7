"""zarr v2 and v3 arrays, read and written with zarr-python (v3 sharded arrays included)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import zarr

from volumes.backends import zarr_direct
from volumes.backends.base import StoredVolume
from volumes.backends.meta import METADATA_ERRORS, check_array_meta
from volumes.backends.zarr_codecs import bound_decoding, inline_small_chunks
from volumes.errors import OversizedChunkError, VolumeFormatError
from volumes.ome import read_translation, read_voxel_size
from volumes.urls import is_url, join_url, zarr_store
from volumes.volume import Format, VoxelSize
from volumes.voxel_size import spatial


class ZarrVolume(StoredVolume):
    """A zarr v3 array. ``chunks`` are the shards when sharded."""

    format: Format = "zarr3"

    def _open(self) -> Any:
        zarr_format: Literal[2, 3] = 3 if self.format == "zarr3" else 2
        try:
            store = zarr_store(self.path, read_only=self.mode == "r") if is_url(self.path) else self.path
            array = zarr.open_array(store, path=self.dataset or "", mode=self.mode, zarr_format=zarr_format)
        except METADATA_ERRORS as err:
            raise VolumeFormatError(
                f"{self._meta_file()} is not array metadata zarr can read: {err}"
            ) from None
        if self.mode == "r":  # an input: someone else's chunks (outputs are ours); our own bugs here
            bound_decoding(array)  # stay bugs, not "metadata zarr cannot read"
        elif zarr_format == 3:
            inline_small_chunks(array)  # an output's small chunks: no thread hand-off per chunk
        return array

    def _meta_file(self) -> str:
        if is_url(self.path):
            return join_url(self.path, self.dataset) + (
                "/zarr.json" if self.format == "zarr3" else "/.zarray"
            )
        return str(self.node / ("zarr.json" if self.format == "zarr3" else ".zarray"))

    def _load_meta(self) -> None:
        where = self._meta_file()
        array = self._handle()
        try:
            self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
            # A shard is the smallest unit that one writer must own, so it is our "chunk".
            self.chunks = tuple(array.shards or array.chunks)
        except METADATA_ERRORS as err:
            raise VolumeFormatError(f"{where} is not array metadata zarr can read: {err}") from None
        check_array_meta(where, self.shape, self.chunks, self.dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._handle().attrs.asdict())

    @property
    def voxel_size(self) -> VoxelSize | None:
        """From the OME-Zarr multiscales of an enclosing group, else the array's ``resolution``."""
        if is_url(self.path):
            from volumes.remote import url_voxel_size

            found = url_voxel_size(self.path, self.dataset, self.format)
        else:
            found = read_voxel_size(self.node, self.format)
        return found or spatial(self.attrs.get("resolution"))

    @property
    def translation(self) -> VoxelSize | None:
        """From the OME-Zarr multiscales of an enclosing group (the dataset's and its multiscale's)."""
        if is_url(self.path):
            from volumes.remote import url_translation

            return url_translation(self.path, self.dataset, self.format)
        return read_translation(self.node, self.format)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._handle()[slices])
        except OversizedChunkError as err:
            raise err.located(where=self._where()) from None

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        array = self._handle()
        # Whole chunks of a local array go straight to their files (zarr's per-call overhead is
        # larger than the encoding itself); zarr writes whatever that path declines.
        if not is_url(self.path) and zarr_direct.write_chunks(array, self.node, slices, data):
            return
        array[slices] = data

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        self._handle().update_attributes(attrs)


class Zarr2Volume(ZarrVolume):
    """A zarr v2 array."""

    format: Format = "zarr2"
