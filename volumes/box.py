"""Axis-aligned voxel boxes: the one geometry value everything else is built from.

A ``Box`` is half-open: it holds the voxels ``offset <= p < offset + shape`` on every axis.
Boxes are immutable; every operation returns a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from volumes.errors import GeometryError


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True, order=True)
class Box:
    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset", _ints(self.offset))
        object.__setattr__(self, "shape", _ints(self.shape))
        if len(self.offset) != len(self.shape):
            raise GeometryError(f"box offset {self.offset} and shape {self.shape} differ in rank")
        if any(s < 0 for s in self.shape):
            raise GeometryError(f"box shape {self.shape} has a negative extent")

    @classmethod
    def from_bounds(cls, begin: Sequence[int], end: Sequence[int]) -> Box:
        return cls(tuple(begin), tuple(max(0, e - b) for b, e in zip(begin, end, strict=True)))

    @classmethod
    def of_shape(cls, shape: Sequence[int]) -> Box:
        return cls((0,) * len(shape), tuple(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def end(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offset, self.shape, strict=True))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def is_empty(self) -> bool:
        return any(s == 0 for s in self.shape)

    def intersect(self, other: Box) -> Box:
        begin = tuple(max(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end, strict=True))
        return Box.from_bounds(begin, end)

    def intersects(self, other: Box) -> bool:
        return not self.intersect(other).is_empty()

    def contains(self, other: Box) -> bool:
        return all(
            so <= oo and oe <= se
            for so, se, oo, oe in zip(self.offset, self.end, other.offset, other.end, strict=True)
        )

    def grow(self, before: Sequence[int], after: Sequence[int] | None = None) -> Box:
        after = before if after is None else after
        offset = tuple(o - b for o, b in zip(self.offset, before, strict=True))
        shape = tuple(s + b + a for s, b, a in zip(self.shape, before, after, strict=True))
        return Box(offset, shape)

    def shift(self, by: Sequence[int]) -> Box:
        return Box(tuple(o + d for o, d in zip(self.offset, by, strict=True)), self.shape)

    def relative_to(self, origin: Box | Sequence[int]) -> Box:
        """This box in the coordinates of ``origin`` (a box's offset, or a point)."""
        point = origin.offset if isinstance(origin, Box) else tuple(origin)
        return Box(tuple(o - p for o, p in zip(self.offset, point, strict=True)), self.shape)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape, strict=True))

    def union_hull(self, other: Box) -> Box:
        """The smallest box holding both (empty boxes are ignored)."""
        if self.is_empty():
            return other
        if other.is_empty():
            return self
        begin = tuple(min(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        end = tuple(max(a, b) for a, b in zip(self.end, other.end, strict=True))
        return Box.from_bounds(begin, end)

    def to_json(self) -> dict[str, list[int]]:
        return {"offset": list(self.offset), "shape": list(self.shape)}
