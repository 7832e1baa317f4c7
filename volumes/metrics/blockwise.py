"""Scoring two label volumes of any size block by block, in memory flat in the volume's size.

The volume is cut into blocks (aligned to the segmentation's chunks); each block of both volumes is
read, its contingency table counted (:func:`volumes.metrics.table.table_of`) and merged into the
sum; the metrics come from the merged table. Memory is one block of each volume plus the table
(one entry per distinct (gt, pred) pair), never the volume. The same functions run in one process
(:func:`evaluate_volumes`) or as Dask tasks (``workers.evaluation``: a few blocks per task, each
task returning its small table).

::

    +--------+--------+----+      block tables          merged table          figures
    | b0     | b1     | b2 |  ->  {(g,p): n} per block -> sum over blocks  ->  adapted Rand, VOI,
    +--------+--------+----+                             (exactly the whole    IoU, AP
    | b3     | b4     | b5 |                              volume's table)
    +--------+--------+----+
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from volumes.box import Box
from volumes.errors import GeometryError, VolumeError
from volumes.metrics.scores import METRICS, Metric, Scores, score_table
from volumes.metrics.table import ContingencyTable, TableMerger, table_of
from volumes.volume import Volume

# A block of about 16 Mi voxels: 64 x 512 x 512, the engine's usual block.
DEFAULT_BLOCK_VOXELS = 1 << 24


class LabelError(VolumeError, ValueError):
    """A volume that cannot be scored as labels (floats, negative ids, another shape)."""


def label_shape(volume: Volume, what: str) -> tuple[int, int, int]:
    """The (z, y, x) shape of a label volume: 3D, or 4D with one channel; integer or boolean ids.
    ``what`` names the volume in errors (``segmentation``, ``ground truth``)."""
    where = f"{what} {volume.path}" + (f" (dataset {volume.dataset})" if volume.dataset else "")
    kind = np.dtype(volume.dtype).kind
    if kind not in "iub":
        raise LabelError(
            f"{where} holds {volume.dtype} values, not labels: evaluation compares integer ids "
            "(a probability map is segmented first, by a segmentation job)"
        )
    shape = tuple(volume.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise LabelError(f"{where} has shape {tuple(volume.shape)}; expected (z, y, x) or (1, z, y, x)")
    return (shape[0], shape[1], shape[2])


def read_labels(volume: Volume, box: Box, what: str) -> np.ndarray:
    """The ids of ``box`` (spatial), refusing negative ones."""
    spatial = volume.ndim == 4
    data = volume.read(Box((0, *box.offset), (1, *box.shape)))[0] if spatial else volume.read(box)
    if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
        raise LabelError(
            f"{what} {volume.path} holds a negative id ({int(data.min())}) in the box at {box.offset}; "
            "labels are non-negative integers"
        )
    return data


def block_shape_for(
    shape: Sequence[int], chunks: Sequence[int], voxels: int = DEFAULT_BLOCK_VOXELS
) -> tuple[int, ...]:
    """Whole chunks per axis, grown x first, then y, then z, to about ``voxels`` (never past the
    volume)."""
    block = [min(int(c), int(s)) for c, s in zip(chunks[-3:], shape, strict=True)]
    for axis in (2, 1, 0):
        others = math.prod(block) // block[axis]
        chunk = block[axis]
        fit = max(1, voxels // max(1, others * chunk))
        block[axis] = min(chunk * fit, int(shape[axis]))
    return tuple(block)


def block_boxes(
    shape: Sequence[int], block_shape: Sequence[int], offset: Sequence[int] | None = None
) -> Iterator[Box]:
    """The blocks partitioning the box of ``shape`` at ``offset`` (default: the origin), in C order."""
    origin = tuple(offset) if offset is not None else (0,) * len(shape)
    end = [o + s for o, s in zip(origin, shape, strict=True)]
    starts = [range(o, e, b) for o, e, b in zip(origin, end, block_shape, strict=True)]
    for corner in itertools.product(*starts):
        yield Box.from_bounds(
            corner, [min(c + b, e) for c, b, e in zip(corner, block_shape, end, strict=True)]
        )


def region_of(shape: Sequence[int], roi: Box | None) -> Box:
    """The box to score: ``roi`` when it lies inside the volume (GeometryError otherwise), else all."""
    whole = Box.of_shape(shape)
    if roi is None:
        return whole
    if roi.ndim != 3 or roi.is_empty() or roi.intersect(whole) != roi:
        raise GeometryError(
            f"the region at {roi.offset} of shape {roi.shape} is not inside the volume {tuple(shape)}"
        )
    return roi


def table_of_box(seg: Volume, gt: Volume, box: Box) -> ContingencyTable:
    """The contingency table of one block."""
    return table_of(read_labels(gt, box, "ground truth"), read_labels(seg, box, "segmentation"))


def table_of_boxes(seg: Volume, gt: Volume, boxes: Iterable[Box]) -> ContingencyTable:
    merger = TableMerger()
    for box in boxes:
        merger.add(table_of_box(seg, gt, box))
    return merger.result()


def check_pair(seg: Volume, gt: Volume) -> tuple[int, int, int]:
    """The common (z, y, x) shape of the two volumes; LabelError naming both otherwise."""
    seg_shape, gt_shape = label_shape(seg, "segmentation"), label_shape(gt, "ground truth")
    if seg_shape != gt_shape:
        raise LabelError(
            f"segmentation {seg.path} has shape {seg_shape} and ground truth {gt.path} {gt_shape}; "
            "they must cover the same voxels"
        )
    return seg_shape


def evaluate_volumes(
    seg: Volume,
    gt: Volume,
    *,
    metrics: Iterable[Metric] = METRICS,
    block_shape: Sequence[int] | None = None,
    roi: Box | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> Scores:
    """Score ``seg`` against ``gt`` (within ``roi``, default everywhere) block by block in this
    process. ``on_block(done, total)`` is called after each block."""
    shape = check_pair(seg, gt)
    region = region_of(shape, roi)
    block = tuple(block_shape) if block_shape is not None else block_shape_for(region.shape, seg.chunks)
    boxes = list(block_boxes(region.shape, block, region.offset))
    merger = TableMerger()
    for done, box in enumerate(boxes, start=1):
        merger.add(table_of_box(seg, gt, box))
        if on_block is not None:
            on_block(done, len(boxes))
    return score_table(merger.result(), metrics)
