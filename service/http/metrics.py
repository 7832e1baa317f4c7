"""Prometheus metrics of the service, in the text exposition format (written by hand: a handful of
counters and one histogram do not need a dependency).

Labels are small closed sets (job state, block pass); never a job id, which would make one time
series per job.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.progress import Progress

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Block durations span a tiny test block (tens of ms) to a large GPU block (minutes).
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The runner names block tasks ``pytc-<layout key>-<attempt>-p<pass>-<z>_<y>_<x>``
# (workers.inference.readahead.task_key; keys without the attempt are of older versions).
_BLOCK_KEY = re.compile(r"^pytc-[0-9a-f]+-(?:[0-9a-f]+-)?p(\d)-")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Histogram:
    buckets: tuple[float, ...] = DURATION_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Mapping[str, str]) -> Iterable[str]:
        for bound, count in zip(self.buckets, self.counts, strict=True):
            yield f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {count}"
        yield f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.count}"
        yield f"{name}_sum{_labels(labels)} {_number(self.total)}"
        yield f"{name}_count{_labels(labels)} {self.count}"


class ServiceMetrics:
    """The counters the job manager feeds; :meth:`render` adds the gauges read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.work_done: dict[str, int] = {}  # by unit
        self.voxels_processed = 0
        self.blocks_done = 0
        self.jobs_finished: dict[str, int] = {}
        self.block_seconds: dict[str, Histogram] = {}

    def add_progress(self, previous: Progress, current: Progress) -> None:
        """The work a run did between two of its reports, in its unit (steps, iterations, ...);
        output voxels and blocks too where the job reports them."""
        done = max(0, current.done - previous.done)
        voxels = current.details.get("voxels_done", 0) - previous.details.get("voxels_done", 0)
        blocks = current.details.get("blocks_done", 0) - previous.details.get("blocks_done", 0)
        with self._lock:
            self.work_done[current.unit] = self.work_done.get(current.unit, 0) + done
            if isinstance(voxels, int) and voxels > 0:
                self.voxels_processed += voxels
            if isinstance(blocks, int) and blocks > 0:
                self.blocks_done += blocks

    def observe_block(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.block_seconds.setdefault(phase, Histogram()).observe(seconds)

    def observe_task_stream(self, records: Iterable[Mapping[str, Any]], skip: set[str]) -> float | None:
        """Feed the block histogram from Dask task-stream records (compute time of block tasks, keys
        in ``skip`` already counted); returns the latest stop time seen, the next call's start."""
        latest = None
        for record in records:
            key = str(record.get("key", ""))
            stops = [s for s in record.get("startstops", ()) if s.get("action") == "compute"]
            if stops:
                latest = max(latest or 0.0, *(s["stop"] for s in stops))
            match = _BLOCK_KEY.match(key)
            if match is None or key in skip or not stops:
                continue
            skip.add(key)
            self.observe_block(match.group(1), sum(s["stop"] - s["start"] for s in stops))
        return latest

    def job_finished(self, state: str) -> None:
        with self._lock:
            self.jobs_finished[state] = self.jobs_finished.get(state, 0) + 1

    def render(self, jobs_by_state: Mapping[str, int], workers: int | None) -> str:
        """The exposition text; ``workers`` is None while Dask is not connected."""
        with self._lock:
            finished = sorted(self.jobs_finished.items())
            work, voxels = sorted(self.work_done.items()), self.voxels_processed
            blocks = self.blocks_done
            durations = [
                line
                for phase, hist in sorted(self.block_seconds.items())
                for line in hist.lines("pytc_block_duration_seconds", {"pass": phase})
            ]
        families = [
            ("pytc_jobs", "gauge", "Jobs in the store by state.",
             [f"pytc_jobs{_labels({'state': s})} {n}" for s, n in sorted(jobs_by_state.items())]),
            ("pytc_queue_depth", "gauge", "Jobs waiting to run.",
             [f"pytc_queue_depth {jobs_by_state.get('queued', 0)}"]),
            ("pytc_dask_workers", "gauge", "Dask workers connected to the scheduler.",
             [f"pytc_dask_workers {workers or 0}"]),
            ("pytc_dask_connected", "gauge", "1 while the service holds a connected Dask client.",
             [f"pytc_dask_connected {int(workers is not None)}"]),
            ("pytc_jobs_finished_total", "counter", "Jobs run by this process that ended, by state.",
             [f"pytc_jobs_finished_total{_labels({'state': s})} {n}" for s, n in finished]),
            ("pytc_work_done_total", "counter", "Work finished by jobs of this process, by unit.",
             [f"pytc_work_done_total{_labels({'unit': u})} {n}" for u, n in work]),
            ("pytc_blocks_done_total", "counter", "Output blocks finished by jobs of this process.",
             [f"pytc_blocks_done_total {blocks}"]),
            ("pytc_voxels_processed_total", "counter", "Output voxels (per channel) finished.",
             [f"pytc_voxels_processed_total {voxels}"]),
            ("pytc_block_duration_seconds", "histogram", "Compute time of one block task on a worker.",
             durations),
        ]  # fmt: skip
        out = [
            line
            for name, kind, help_text, samples in families
            for line in (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples)
        ]
        return "\n".join(out) + "\n"
