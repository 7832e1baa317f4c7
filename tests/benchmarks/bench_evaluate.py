"""Evaluation benchmark: the out-of-core figures (blockwise contingency tables, merged) against the
same figures computed in memory, on 64x512x512 synthetic labels read from zarr.

Two cases from the synthetic EM generator (``volumes.synth``): cells (dense instances: the ground
truth's cells; the prediction splits each at x = 256 and merges cells 2k and 2k+1) and mitochondria
(sparse: connected components of the ground-truth mask; the prediction the components of the mask
eroded once). Each is timed, reading included, as:

- out of core, ``pytc evaluate``'s path (``volumes.metrics.evaluate_volumes``) with its default
  block (here the whole volume: one block) and with 32x256x256 blocks (8 blocks);
- in memory, the published scripts' way (``volumes.metrics.reference``: a sparse overlap matrix of
  the whole volume per metric, as PyTC's ``evaluate.py`` builds it);
- in memory, our table of the whole volume at once (``table_of`` + ``score_table``);
- in memory, scikit-image's ``adapted_rand_error`` + ``variation_of_information`` (two metrics only).

Peak memory is tracemalloc's peak of allocations during each (numpy's included). The ratio with a
goal (1.0 or better) is the in-memory table's time over the out-of-core time: the same counting
done once on the whole arrays. The scripts' way builds the overlap matrix once per metric with
``np.unique(..., return_inverse=True)`` (an argsort of every voxel, twice per metric), which is what
makes it slow; it is the oracle of the tests, not a contender. The figures of every path are checked
equal before anything is recorded.

    .venv/bin/python tests/benchmarks/bench_evaluate.py [--shape 64 512 512] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from volumes.box import Box  # noqa: E402
from volumes.metrics import evaluate_volumes, score_table, table_of  # noqa: E402
from volumes.metrics import reference as ref  # noqa: E402
from volumes.open import open_volume  # noqa: E402
from volumes.synth import generate_em_volume  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
CHUNKS = (32, 256, 256)


def cases(shape: tuple[int, int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    volume = generate_em_volume(shape, seed=0)
    cells = volume.cells.astype(np.uint32)
    split = cells.astype(np.uint64) // 2 * 2
    split[:, :, shape[2] // 2 :] += np.uint64(1 << 20)
    split[cells == 0] = 0
    mito, _ = ndimage.label(volume.mito > 0)
    eroded, _ = ndimage.label(ndimage.binary_erosion(volume.mito > 0))
    return {"cells": (cells, split), "mitochondria": (mito.astype(np.uint32), eroded.astype(np.uint32))}


def write(root: Path, name: str, gt: np.ndarray, pred: np.ndarray) -> None:
    group = zarr.create_group(root / f"{name}.zarr", zarr_format=3)
    group.create_array("gt", shape=gt.shape, chunks=CHUNKS, dtype=gt.dtype)[...] = gt
    group.create_array("seg", shape=pred.shape, chunks=CHUNKS, dtype=pred.dtype)[...] = pred


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak


def out_of_core(path: Path, block: tuple[int, int, int] | None) -> dict[str, float]:
    seg, gt = open_volume(path, "seg"), open_volume(path, "gt")
    return evaluate_volumes(seg, gt, block_shape=block).figures()


def whole(path: Path, dataset: str) -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box.of_shape(volume.shape))


def in_memory(path: Path) -> dict[str, float]:
    gt, pred = whole(path, "gt"), whole(path, "seg")
    error, precision, recall = ref.adapted_rand_error(gt, pred)
    split, merge = ref.variation_of_information(gt, pred)
    return {
        "adapted_rand_error": error,
        "adapted_rand_precision": precision,
        "adapted_rand_recall": recall,
        "voi_split": split,
        "voi_merge": merge,
        "foreground_iou": ref.foreground_iou(gt, pred),
        **ref.instance_ap(gt, pred),
    }


def one_table(path: Path) -> dict[str, float]:
    return score_table(table_of(whole(path, "gt"), whole(path, "seg"))).figures()


def scikit_image(path: Path) -> dict[str, float]:
    from skimage.metrics import adapted_rand_error, variation_of_information

    gt, pred = whole(path, "gt"), whole(path, "seg")
    split, merge = variation_of_information(gt, pred.astype(np.int64), ignore_labels=[0])
    error = adapted_rand_error(gt, pred.astype(np.int64))[0]
    return {"adapted_rand_error_skimage": float(error), "voi_split": float(split), "voi_merge": float(merge)}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a.keys() & b.keys())


def run(shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (gt, pred) in cases(shape).items():
            write(Path(tmp), name, gt, pred)
            path = Path(tmp) / f"{name}.zarr"
            mib = gt.nbytes / 2**20 + pred.nbytes / 2**20
            rows.append((f"{name} {shape}: {int(gt.max())} gt ids, both arrays {mib:.0f} MiB", ""))
            whole, t_ref, m_ref = measured(lambda p=path: in_memory(p))
            ooc, t_ooc, m_ooc = measured(lambda p=path: out_of_core(p, None))
            blocks, t_blk, m_blk = measured(lambda p=path: out_of_core(p, CHUNKS))
            table, t_tab, m_tab = measured(lambda p=path: one_table(p))
            sk, t_sk, m_sk = measured(lambda p=path: scikit_image(p))
            assert same(ooc, whole) and same(blocks, whole) and same(ooc, sk), (ooc, whole, sk)
            assert same(table, ooc)
            rows += [
                ("  out of core, default block (s / peak MiB)", f"{t_ooc:.2f} / {m_ooc / 2**20:.0f}"),
                (f"  out of core, {CHUNKS} blocks (s / peak MiB)", f"{t_blk:.2f} / {m_blk / 2**20:.0f}"),
                ("  in memory, the scripts' way (s / peak MiB)", f"{t_ref:.2f} / {m_ref / 2**20:.0f}"),
                (
                    "  in memory, one table of the whole volume (s / peak MiB)",
                    f"{t_tab:.2f} / {m_tab / 2**20:.0f}",
                ),
                ("  scikit-image, Rand + VOI only (s / peak MiB)", f"{t_sk:.2f} / {m_sk / 2**20:.0f}"),
                ("  one table in memory / out of core, default block (goal >= 1.0)", f"{t_tab / t_ooc:.2f}"),
                (f"  one table in memory / out of core, {CHUNKS} blocks", f"{t_tab / t_blk:.2f}"),
                ("  the scripts' way / out of core, default block", f"{t_ref / t_ooc:.2f}"),
                ("  scikit-image / out of core, default block", f"{t_sk / t_ooc:.2f}"),
                ("  adapted Rand (SNEMI3D) / VOI split / merge / AP-75", _figures(ooc)),
            ]
    return rows


def _figures(scores: dict[str, float]) -> str:
    keys = ("adapted_rand_error", "voi_split", "voi_merge", "ap_75")
    return " / ".join(f"{scores[k]:.4f}" for k in keys)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join([*lines, *(f"| {label:<{width}} | {value} |" for label, value in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1], args.shape[2])
    text = table(run(shape))
    print(text)
    if not args.no_record:
        command = "python tests/benchmarks/bench_evaluate.py " + " ".join(sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        header = f"\n## Evaluation: out of core against in memory ({stamp}, {platform.machine()})\n\n"
        with RESULTS.open("a") as out:
            out.write(f"{header}`{command.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
