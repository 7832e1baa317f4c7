"""The data roots hold while a job runs, not only when it is admitted.

Admission resolves every path a job names, symlinks followed, inside the data roots
(``service.documents.sections.resolve_path``). A directory can be swapped for a symlink afterwards,
while the job runs: without a second look the job would read another volume into an output marked
complete, or write its chunks outside the roots. So the engine looks again each time it opens a
path on a worker (the input for each block's reader, the output and the run folder for each block
task, every chunk file, spill and marker before it is written, the output before it is marked
complete): the path is resolved, every symlink followed, and must still lie inside one of the
job's roots.

What this cannot see is a swap inside the instant between the look and the open (the files are
opened by path by the storage libraries); a swap between blocks, or between chunks, is caught.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from volumes.box import Box
from volumes.urls import is_url, join_url, normalise_url, url_under
from volumes.volume import Volume
from workers.errors import PathEscapeError


def confined(path: str | os.PathLike[str], roots: Sequence[str]) -> Path:
    """``path`` resolved (every symlink followed) when it lies inside one of ``roots``, which are
    resolved already; :class:`PathEscapeError` naming the path otherwise. No roots: no confinement
    (a job built in a test or a debugger). An object store URL is checked against the URL roots
    (normalised at admission; no symlinks can be swapped in there) and returned as a Path of its
    text, which nothing opens."""
    if is_url(path):
        return _confined_url(str(path), roots)
    if not roots:
        return Path(path)
    try:
        resolved = Path(path).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a symlink loop swapped in
        raise PathEscapeError(f"{path} cannot be resolved any more: {err}") from err
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathEscapeError(
            f"{path} now resolves to {resolved}, outside the data roots ({', '.join(roots)}): "
            "a symlink was put in its way after the job was admitted"
        )
    return resolved


def _confined_url(url: str, roots: Sequence[str]) -> Path:
    if roots and not any(is_url(root) and url_under(normalise_url(url), root) for root in roots):
        raise PathEscapeError(f"{url} is outside the data roots ({', '.join(roots)})")
    return Path(url)


def node(path: str, dataset: str | None) -> Path | str:
    """The directory (or file) of an array: its container joined with its dataset (a URL stays one)."""
    return join_url(path, dataset) if is_url(path) else Path(path, dataset or "")


class ChunkFiles:
    """Where a stored output keeps the chunks of a box: the files a write goes to, so that each is
    confined before it is written (a chunk folder swapped for a symlink out of the roots is refused).

    zarr v2 and v3 name chunks by their metadata's key encoding (``c/0/1/2/3``, ``0.1.2.3``); N5 by
    the block's grid position in its own, reversed, axis order (``3/2/1/0``)."""

    def __init__(self, node: Path, chunks: tuple[int, ...], encode: Callable[[tuple[int, ...]], str]) -> None:
        self.node, self.chunks, self.encode = node, chunks, encode

    @classmethod
    def of(cls, volume: Volume) -> ChunkFiles | None:
        """The chunk files of ``volume`` when its format is one we write, else None."""
        if is_url(volume.path):
            return None  # objects in a store: confined as a whole (no symlinks to swap in)
        where = Path(volume.path, volume.dataset or "")
        if volume.format in ("zarr3", "zarr2"):
            import zarr

            array = zarr.open_array(volume.path, path=volume.dataset or "", mode="r")
            return cls(where, tuple(volume.chunks), array.metadata.encode_chunk_key)
        if volume.format == "n5":
            return cls(where, tuple(volume.chunks), lambda index: "/".join(map(str, reversed(index))))
        if volume.format == "precomputed":  # the scale's folder: shards and chunks are named by
            return cls(where, tuple(volume.chunks), lambda index: "")  # Morton codes; one folder
        return None

    def paths(self, box: Box) -> Iterator[Path]:
        """The files holding the chunks that ``box`` (all axes, channels first) touches."""
        ranges = [
            range(start // size, -(-end // size))
            for start, end, size in zip(box.offset, box.end, self.chunks, strict=True)
        ]
        for index in itertools.product(*ranges):
            yield self.node / self.encode(tuple(index))
