"""N5 datasets: metadata from ``attributes.json``, voxels through tensorstore's n5 driver.

N5 keeps its axes reversed on disk (x first); that is undone here and nowhere else.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.backends.meta import check_array_meta
from volumes.errors import OversizedChunkError, VolumeFormatError
from volumes.files import read_json_object, write_json_atomic
from volumes.urls import is_url, join_url, read_json_url, tensorstore_kvstore, write_json_url
from volumes.volume import Format, VoxelSize
from volumes.voxel_size import nm_per, spatial

# The keys of an N5 array's attributes.json that are its format, not user attributes.
N5_RESERVED = frozenset({"dimensions", "blockSize", "dataType", "compression", "n5"})
# How tensorstore words a block that holds more than it may (see N5Volume._oversized).
_N5_OVERSIZED = re.compile(r"(End of data expected)|exceeds blockSize")
_N5_FILE = re.compile(r'file "([^"]+)"')


class N5Volume(StoredVolume):
    """An N5 dataset, in our (z, y, x) / (c, z, y, x) order."""

    format: Format = "n5"

    def _load_meta(self) -> None:
        meta = self._meta()
        try:
            self.shape = tuple(int(d) for d in reversed(meta["dimensions"]))
            self.chunks = tuple(int(b) for b in reversed(meta["blockSize"]))
            self.dtype = np.dtype(meta["dataType"])
        except (KeyError, TypeError, ValueError) as err:
            raise VolumeFormatError(f"{self.node}/attributes.json is not N5 array metadata: {err}") from err
        check_array_meta(f"{self.node}/attributes.json", self.shape, self.chunks, self.dtype)

    def _meta(self) -> dict[str, Any]:
        if is_url(self.path):
            return read_json_url(join_url(self.path, self.dataset) + "/attributes.json") or {}
        return read_json_object(self.node / "attributes.json") or {}

    def _open(self) -> Any:
        import tensorstore as ts  # only here: a parent that used tensorstore cannot fork safely

        kvstore = (
            tensorstore_kvstore(self.path) if is_url(self.path) else {"driver": "file", "path": self.path}
        )
        spec = {"driver": "n5", "kvstore": kvstore, "path": self.dataset or ""}
        store = ts.open(spec, read=True, write=self.mode == "r+").result()
        return store.T  # N5 order (x, y, z[, c]) -> ours (z, y, x) / (c, z, y, x)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self._meta().items() if k not in N5_RESERVED}

    @property
    def voxel_size(self) -> VoxelSize | None:
        """From ``resolution`` or ``pixelResolution`` (here, else on the parent group), times
        ``downsamplingFactors``, as N5 Viewer and BigDataViewer write them (in N5 axis order)."""
        own = self._meta()
        res = n5_resolution(own)
        if res is None and self.dataset:
            parent = self.dataset.rpartition("/")[0]
            res = n5_resolution(
                (read_json_url(join_url(self.path, parent) + "/attributes.json") or {})
                if is_url(self.path)
                else (read_json_object(self.node.parent / "attributes.json") or {})
            )
        factors = own.get("downsamplingFactors")
        if res is not None and isinstance(factors, list) and len(factors) == len(res):
            res = [r * float(f) for r, f in zip(res, factors, strict=True)]
        return spatial(res[::-1] if res is not None else None)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._handle()[slices].read().result())
        except ValueError as err:
            oversized = self._oversized(err)
            if oversized is None:
                raise
            raise oversized from None

    def _oversized(self, err: ValueError) -> OversizedChunkError | None:
        """tensorstore's refusal of a block longer than its header says, as our error, or None.

        tensorstore decodes an N5 block by reading exactly the elements its header declares (at
        most ``blockSize``) from a decompressing stream, so a bomb costs no more than one block; it
        refuses the block with "End of data expected" (more data follows) or "exceeds blockSize".
        """
        text = str(err)
        found = _N5_OVERSIZED.search(text)
        if found is None:
            return None
        chunk = _N5_FILE.search(text)
        name = os.path.relpath(chunk.group(1), self.node) if chunk else None
        limit = math.prod(self.chunks) * self.dtype.itemsize
        what = (
            "decodes past the elements its header declares"
            if found.group(1)
            else "declares a block over blockSize"
        )
        return OversizedChunkError(limit, what, self._where(), name)

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self._handle()[slices].write(data).result()

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        reserved = sorted(N5_RESERVED & attrs.keys())
        if reserved:
            raise VolumeFormatError(f"attributes {reserved} of {self._where()} are N5 metadata, not ours")
        if is_url(self.path):
            write_json_url(join_url(self.path, self.dataset) + "/attributes.json", {**self._meta(), **attrs})
        else:
            write_json_atomic(self.node / "attributes.json", {**self._meta(), **attrs})


def n5_resolution(attrs: Mapping[str, Any]) -> list[float] | None:
    """``resolution`` (with tensorstore's ``units``) or ``pixelResolution`` (N5 Viewer's list or
    {dimensions, unit}), in nm and N5 order."""
    res, units = attrs.get("resolution"), attrs.get("units")
    if isinstance(res, list) and isinstance(units, list) and len(units) == len(res):
        return [float(r) * nm_per(u) for r, u in zip(res, units, strict=True)]
    if isinstance(res, list):
        return [float(r) for r in res]
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict) and isinstance(pixel.get("dimensions"), list):
        factor = nm_per(pixel.get("unit", "nm"))
        return [float(r) * factor for r in pixel["dimensions"]]
    return [float(r) for r in pixel] if isinstance(pixel, list) else None
