"""Training batches from the stores, made ahead of the model by background threads.

Batch ``i`` is a pure function of ``(seed, i)``: its own generator is seeded with both, draws the
crops (:class:`volumes.sampling.CropSampler`), plans and applies the augmentations, normalises the
image as inference will and makes the targets. So the loader's only state is the next index, any
number of threads can make batches in any order, and a resumed run sees exactly the batches a
straight run would have seen.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.targets import make_targets
from models.training_config import HeadSpec
from volumes.augment import AugmentSpec, apply_geometry, apply_intensity, plan_augment, wants_missing_section
from volumes.sampling import CropSampler, SamplingError
from workers.inference.engine import normalize
from workers.inference.job import Normalize

F32 = NDArray[np.float32]


@dataclass
class Batch:
    index: int
    image: F32  # (n, c, z, y, x)
    targets: F32  # (n, channels, z, y, x)
    mask: F32 | None  # (n, 1, z, y, x) valid voxels, when the job has a valid mask
    misses: tuple[int, ...]  # per sample: draws below the foreground threshold
    hits: tuple[bool, ...]  # per sample: the crop meets the threshold
    seconds: float = 0.0  # time to make it (on its thread)


class BatchMaker:
    """Makes batch ``i`` from ``(seed, i)``; safe to call from several threads at once."""

    def __init__(
        self,
        sampler: CropSampler,
        heads: tuple[HeadSpec, ...],
        normalization: Normalize,
        augment: AugmentSpec,
        batch_size: int,
        seed: int,
    ) -> None:
        self.sampler, self.heads, self.normalization = sampler, heads, normalization
        self.augment, self.batch_size, self.seed = augment, batch_size, seed
        self.margin = sampler.rules.margin

    def make(self, index: int) -> Batch:
        started = time.perf_counter()
        rng = np.random.default_rng([self.seed, index])
        samples = [self._sample(rng) for _ in range(self.batch_size)]
        image = np.stack([s[0] for s in samples])
        targets = np.stack([s[1] for s in samples])
        mask = np.stack([s[2] for s in samples]) if samples[0][2] is not None else None  # type: ignore[misc]
        misses = tuple(s[3] for s in samples)
        hits = tuple(s[4] for s in samples)
        return Batch(index, image, targets, mask, misses, hits, time.perf_counter() - started)

    def _sample(self, rng: np.random.Generator) -> tuple[F32, F32, F32 | None, int, bool]:
        drop = wants_missing_section(rng, self.augment) and self.sampler.can_add_sections(1)
        crop = self.sampler.draw(rng, extra_z=1 if drop else 0)
        plan = plan_augment(rng, self.augment, _shape3(crop.label.shape), drop)
        image = normalize(crop.image, self.normalization)
        image = apply_geometry(plan, image if image.ndim == 4 else image[None], interpolate=True)
        label = apply_geometry(plan, crop.label, interpolate=False)
        targets = make_targets(label, self.heads, self.margin)
        image = apply_intensity(plan, self._inner(image).astype(np.float32, copy=False))
        mask: F32 | None = None
        if crop.mask is not None:
            warped = apply_geometry(plan, crop.mask, interpolate=False)
            mask = (np.asarray(self._inner(warped)) != 0).astype(np.float32)[None]
        return np.ascontiguousarray(image), targets, mask, crop.misses, crop.hit

    def _inner(self, array: NDArray[np.generic]) -> NDArray[np.generic]:
        m = self.margin
        if not m:
            return array
        return array[..., m:-m, m:-m, m:-m]


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return int(shape[-3]), int(shape[-2]), int(shape[-1])


class ForegroundBudget:
    """Fails the run after ``budget`` draws in a row without enough foreground (across crops), so a
    label without foreground is an error instead of endless rejection. Its count is part of the
    checkpoint's sampler state."""

    def __init__(self, budget: int, min_foreground: int, in_a_row: int = 0) -> None:
        self.budget, self.min_foreground, self.in_a_row = budget, min_foreground, in_a_row

    def account(self, batch: Batch, where: str) -> None:
        if self.min_foreground <= 0:
            return
        for misses, hit in zip(batch.misses, batch.hits, strict=True):
            self.in_a_row = 0 if hit else self.in_a_row + misses
            if self.in_a_row >= self.budget:
                raise SamplingError(
                    f"{self.in_a_row} random crops in a row from {where} held fewer than "
                    f"{self.min_foreground} foreground voxel(s) (the rejection budget is {self.budget}): "
                    "the label has no foreground, or too little for sampling.min_foreground"
                )


class Prefetcher:
    """Batches ``start, start+1, ... stop-1`` made by ``threads`` threads, up to ``depth`` ahead."""

    def __init__(self, make: Callable[[int], Batch], start: int, stop: int, threads: int, depth: int) -> None:
        self._make, self._next, self._stop = make, start, stop
        self._depth = max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="pytc-loader")
        self._pending: collections.deque[Future[Batch]] = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._depth and self._next < self._stop:
            self._pending.append(self._pool.submit(self._make, self._next))
            self._next += 1

    def next(self) -> tuple[Batch, float]:
        """The next batch in order and the seconds the caller waited for it."""
        if not self._pending:
            raise StopIteration("no batches left")
        started = time.perf_counter()
        batch = self._pending.popleft().result()
        waited = time.perf_counter() - started
        self._fill()
        return batch, waited

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
