"""One block's partial sums for other blocks' chunks: one file per source block, read by offset.

A block's pass 1 hands the part of its accumulator inside every chunk it cannot finish alone to
scratch (``workers.inference.engine``). Those parts go, as they become final, into one file::

    [part][part]...[part][index: JSON {"z_y_x": [offset, length, shape]}][index length: u64][MAGIC]

Each part is the ``.npy`` bytes of a float32 array, compressed with the run folder's codec (Blosc,
bit shuffle and zstd: the bytes per output byte of one file per part). The file is written under a
temporary name, synced once and renamed when the pass ends, so a reader sees the whole file or
none; a consumer reads the trailer, the index and its own part (three reads, whatever the block).
The driver deletes the file once every block reading it finished pass 2
(``workers.inference.schedule``); a file found missing at resume has its block's pass 1 run again.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from volumes.blocks import Index
from volumes.files import FILE_MODE

MAGIC = b"PYTCSPL1"
_TRAILER = struct.Struct("<Q8s")


def _key(chunk: Index) -> str:
    return "_".join(str(i) for i in chunk)


class SpillWriter:
    """Collects one block's parts in a temporary file; :meth:`close` publishes it (if any part)."""

    def __init__(self, path: Path, codec: object) -> None:
        self.path, self.codec = path, codec
        self._lock = threading.Lock()
        self._index: dict[str, list[object]] = {}
        self._offset = 0
        self._handle: io.BufferedWriter | None = None
        self._tmp: str | None = None

    def add(self, chunk: Index, data: np.ndarray) -> int:
        """Compress ``data`` (on the calling thread) and append it; the bytes it takes."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(data, dtype=np.float32), allow_pickle=False)
        packed = bytes(self.codec.encode(buffer.getbuffer()))  # type: ignore[attr-defined]
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, self._tmp = tempfile.mkstemp(
                    dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
                )
                self._handle = os.fdopen(fd, "wb")
            self._handle.write(packed)
            self._index[_key(chunk)] = [self._offset, len(packed), list(data.shape)]
            self._offset += len(packed)
        return len(packed)

    def close(self) -> int:
        """Write the index, sync once, rename into place; the bytes of the index and trailer."""
        if self._handle is None:
            return 0
        index = json.dumps(self._index, separators=(",", ":")).encode()
        tail = index + _TRAILER.pack(len(index), MAGIC)
        handle, self._handle = self._handle, None
        try:
            with handle:
                handle.write(tail)
                handle.flush()
                os.fchmod(handle.fileno(), FILE_MODE)
                os.fsync(handle.fileno())
            os.replace(str(self._tmp), self.path)
        except BaseException:
            self.abort()
            raise
        return len(tail)

    def abort(self) -> None:
        """The block did not complete: nothing is published."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)


def read_part(path: Path, chunk: Index, codec: object) -> np.ndarray:
    """The part of ``chunk`` in a spill file; FileNotFoundError when the file or the part is missing,
    ValueError when the file is not one."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size < _TRAILER.size:
            raise ValueError(f"{path} is not a spill file (too short)")
        handle.seek(size - _TRAILER.size)
        length, magic = _TRAILER.unpack(handle.read(_TRAILER.size))
        if magic != MAGIC or length > size - _TRAILER.size:
            raise ValueError(f"{path} is not a spill file")
        handle.seek(size - _TRAILER.size - length)
        index = json.loads(handle.read(length))
        entry = index.get(_key(chunk))
        if entry is None:
            raise FileNotFoundError(f"{path} holds no partial sums for chunk {chunk}")
        offset, nbytes, _shape = entry
        handle.seek(offset)
        packed = handle.read(nbytes)
    return np.load(io.BytesIO(codec.decode(packed)), allow_pickle=False)  # type: ignore[attr-defined]
