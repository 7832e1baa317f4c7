"""A run's done record: which blocks finished pass 1 and pass 2, in two files whatever the job's size.

Layout, in the run folder (``workers.inference.rundir``)::

    done.snap   a snapshot: header, a bitmap per pass (one bit per block), a CRC; replaced atomically
    done.log    what finished since the snapshot: one 8-byte record per (pass, block), appended

Only the driver writes them (the one process that runs the job's protocol), and only after a block
task *returned*: a task returns after every chunk and partial sum it writes is written, so a block
is recorded done only over chunks on disk. Workers write chunks and scratch, never the record, so
any number of them on a shared file system never contend for it.

A record is ``magic << 48 | pass << 40 | block``, the block's linear index in C order. Reading
skips anything else (a torn or zero-filled tail after a crash of the machine), so the log needs no
lock and no repair. Records are appended at most every :data:`WRITE_S` (a killed driver loses
what it had not written: those blocks run again) and fsynced at most every :data:`SYNC_S` and when
the run completes: a record lost to a crash costs that block's recomputation, never a hole
(``workers.inference.schedule``: a spill file is dropped only after the records that free it are
written, and one found missing at start has its pass 1 run again).
A million blocks take 250 KB of snapshot and at most 16 MB of log, read back with numpy in well
under a second.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np

from volumes.blocks import Index
from volumes.files import atomic_write

log = logging.getLogger(__name__)

SNAPSHOT = "done.snap"
LOG = "done.log"
MAGIC = 0x5DC3
SNAP_MAGIC = b"PYTCDONE"
SYNC_S = 2.0  # the log is fsynced at most this often (and when the run completes)
COMPACT_RECORDS = 1 << 20  # a snapshot replaces the log after this many records (or one per block)
WRITE_S = 0.05  # a driver's records are written at most this often (a killed one redoes those)
_HEADER = struct.Struct("<8sQ")


def encode(phase: int, index: int) -> int:
    return MAGIC << 48 | phase << 40 | index


class Ledger:
    """The done record of one run folder, in memory (a byte per block and pass) and on disk."""

    def __init__(self, root: Path, n_blocks: int, p1: bytearray, p2: bytearray) -> None:
        self.root, self.n_blocks = root, n_blocks
        self.p1, self.p2 = p1, p2  # 1 where done; the driver indexes them by linear block index
        self._pending: list[int] = []
        self._log: io.FileIO | None = None  # closed with the ledger, or when it is collected
        self._synced = self._written = time.monotonic()
        self._logged = 0  # records since the last snapshot

    @classmethod
    def open(cls, root: Path, n_blocks: int) -> Ledger:
        """The record as a previous run left it (nothing done when there is none)."""
        p1, p2 = read_bits(root, n_blocks)
        return cls(root, n_blocks, bytearray(p1.tobytes()), bytearray(p2.tobytes()))

    # --- the driver's side -------------------------------------------------------------------------

    def record(self, phase: int, index: int) -> None:
        """(``phase``, block ``index``) finished; on disk at the next :meth:`flush`."""
        (self.p1 if phase == 1 else self.p2)[index] = 1
        self._pending.append(encode(phase, index))
        self._logged += 1

    def flush(self, *, sync: bool = False, lazy: bool = False) -> bool:
        """Append what was recorded since (one write), and fsync when it is time or ``sync``;
        ``lazy``: only when :data:`WRITE_S` went by since the last write (a driver finishing
        thousands of tasks a second writes a few times a second). True when nothing recorded is
        left unwritten."""
        if lazy and time.monotonic() - self._written < WRITE_S and len(self._pending) < 4096:
            return not self._pending
        self._written = time.monotonic()
        if self._pending:
            data = struct.pack(f"<{len(self._pending)}Q", *self._pending)
            self._pending.clear()
            handle = self._log_handle()
            written = 0
            while written < len(data):
                written += handle.write(data[written:]) or 0
            if self._logged >= max(COMPACT_RECORDS, self.n_blocks):
                self.snapshot()  # the log read at a resume stays within a snapshot's size or so
        if self._log is not None and (sync or time.monotonic() - self._synced >= SYNC_S):
            os.fsync(self._log.fileno())
            self._synced = time.monotonic()
        return True

    def snapshot(self) -> None:
        """Write everything to a new snapshot (atomically), then empty the log: a crash in between
        leaves records the snapshot already holds, which read the same."""
        self._logged = 0
        self.flush()
        p1 = np.frombuffer(bytes(self.p1), dtype=np.uint8).astype(bool)
        p2 = np.frombuffer(bytes(self.p2), dtype=np.uint8).astype(bool)
        body = _HEADER.pack(SNAP_MAGIC, self.n_blocks) + np.packbits(p1).tobytes() + np.packbits(p2).tobytes()
        data = body + struct.pack("<I", zlib.crc32(body))
        atomic_write(self.root / SNAPSHOT, lambda h: h.write(data), durable=True)
        if self._log is not None:
            self._log.truncate(0)
        elif (self.root / LOG).exists():
            with open(self.root / LOG, "r+b") as handle:  # emptied, never replaced: one file
                handle.truncate(0)

    def forget(self, phase: int, indices: list[int]) -> None:
        """Un-record (``phase``, blocks) durably (pass-1 partial sums found lost; tests)."""
        for index in indices:
            (self.p1 if phase == 1 else self.p2)[index] = 0
        self.snapshot()

    def close(self) -> None:
        self.flush(sync=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_handle(self) -> io.FileIO:
        if self._log is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._log = io.FileIO(self.root / LOG, "a")
        return self._log


def read_bits(root: Path, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(pass 1 done, pass 2 done) as uint8 arrays of ``n_blocks``, from the snapshot and the log."""
    p1 = np.zeros(n_blocks, dtype=np.uint8)
    p2 = np.zeros(n_blocks, dtype=np.uint8)
    snap = _read_snapshot(root / SNAPSHOT, n_blocks)
    if snap is not None:
        p1[:], p2[:] = snap
    try:
        records = np.fromfile(root / LOG, dtype="<u8")
    except FileNotFoundError:
        records = np.zeros(0, dtype="<u8")
    valid = (records >> np.uint64(48)) == MAGIC
    phase = (records >> np.uint64(40)) & np.uint64(0xFF)
    index = records & np.uint64((1 << 40) - 1)
    valid &= index < n_blocks
    p1[index[valid & (phase == 1)].astype(np.int64)] = 1
    p2[index[valid & (phase == 2)].astype(np.int64)] = 1
    return p1, p2


def _read_snapshot(path: Path, n_blocks: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    nbytes = (n_blocks + 7) // 8
    body, crc = data[:-4], data[-4:]
    if len(data) != _HEADER.size + 2 * nbytes + 4 or struct.pack("<I", zlib.crc32(body)) != crc:
        log.warning("%s is damaged: the blocks it recorded will be computed again", path)
        return None
    magic, count = _HEADER.unpack_from(body)
    if magic != SNAP_MAGIC or count != n_blocks:
        log.warning("%s records %d blocks, not %d: computing them again", path, count, n_blocks)
        return None
    bits = np.frombuffer(body, dtype=np.uint8, offset=_HEADER.size)
    p1 = np.unpackbits(bits[:nbytes], count=n_blocks)
    p2 = np.unpackbits(bits[nbytes:], count=n_blocks)
    return p1, p2


def linear(index: Index, counts: tuple[int, ...]) -> int:
    if len(index) == 3:
        return (index[0] * counts[1] + index[1]) * counts[2] + index[2]
    value = 0
    for i, n in zip(index, counts, strict=True):
        value = value * n + i
    return value


def unlinear(value: int, counts: tuple[int, ...]) -> Index:
    if len(counts) == 3:
        rest, x = divmod(value, counts[2])
        z, y = divmod(rest, counts[1])
        return (z, y, x)
    out = []
    for n in reversed(counts):
        value, i = divmod(value, n)
        out.append(i)
    return tuple(reversed(out))


def done_blocks(root: Path, counts: tuple[int, ...]) -> tuple[set[Index], set[Index]]:
    """The blocks recorded done (pass 1, pass 2) in a run folder: for tests and tools."""
    n = 1
    for c in counts:
        n *= c
    p1, p2 = read_bits(root, n)
    return (
        {unlinear(int(i), counts) for i in np.flatnonzero(p1)},
        {unlinear(int(i), counts) for i in np.flatnonzero(p2)},
    )


def done_count(root: Path) -> tuple[int, int]:
    """How many (pass 1, pass 2) records a run folder holds, without knowing its plan (tests,
    tools: the log may repeat what the snapshot holds, so a count, not a set, is only a bound)."""
    p1 = p2 = 0
    snap = root / SNAPSHOT
    if snap.exists():
        data = snap.read_bytes()
        if len(data) >= _HEADER.size + 4:
            _magic, n = _HEADER.unpack_from(data)
            bits = np.frombuffer(data[_HEADER.size : -4], dtype=np.uint8)
            nbytes = (n + 7) // 8
            p1 += int(np.unpackbits(bits[:nbytes], count=n).sum())
            p2 += int(np.unpackbits(bits[nbytes:], count=n).sum())
    try:
        records = np.fromfile(root / LOG, dtype="<u8")
    except FileNotFoundError:
        return p1, p2
    valid = (records >> np.uint64(48)) == MAGIC
    phase = (records >> np.uint64(40)) & np.uint64(0xFF)
    return p1 + int((valid & (phase == 1)).sum()), p2 + int((valid & (phase == 2)).sum())
