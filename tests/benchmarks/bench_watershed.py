"""Watershed decoders: the blockwise run against the whole-volume decoder, on synthetic EM data.

For each case of :func:`volumes.labels.agreement.watershed_cases` (``binary_watershed`` on the
mitochondria, the demo's objects; ``bc_watershed`` and ``bcd_watershed`` on the cells, touching
objects), on a volume of ``--shape`` cut into blocks of ``--block``, with the halo ``--halo``: the
whole-volume decoder (PyTC's semantics, :func:`volumes.labels.whole.decode_in_memory`) and the
blockwise steps in one process (:func:`volumes.labels.blockwise.decode_blockwise`, the functions
the block tasks run), compared: identical voxels, adapted Rand error, objects cut by a block face
that are whole in the in-memory result (two face neighbours of the object labelled differently),
objects with any voxel labelled otherwise, objects spanning blocks with any voxel labelled otherwise
(the measure reported as "cut" before 2026-12-02); and whether the blockwise labels equal the whole
volume flooded in the blocks' tie order (``decode_watershed(..., "raster")``). Prints a table and
appends it, with the command, to tests/benchmarks/RESULTS.md.

    PYTHONPATH=$PWD .venv/bin/python tests/benchmarks/bench_watershed.py [--shape 64 256 256]
        [--block 32 128 128] [--halo 8 32 32] [--no-record]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from volumes.labels.agreement import agreement, watershed_cases  # noqa: E402
from volumes.labels.blockwise import decode_blockwise  # noqa: E402
from volumes.labels.watershed import decode_watershed  # noqa: E402
from volumes.labels.whole import decode_in_memory  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--block", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--halo", type=int, nargs=3, default=[8, 32, 32])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    block, halo = tuple(args.block), tuple(args.halo)
    shape = "x".join(map(str, args.shape))
    lines = [
        f"| watershed, {shape}, block {'x'.join(map(str, block))}, halo {'x'.join(map(str, halo))} "
        "| objects | identical voxels | adapted Rand | cut at a face | differ | spanning, differ "
        "| equal to the whole volume in the blocks' tie order | whole / blockwise (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (pred, decoder) in watershed_cases(args.shape, seed=0).items():
        decoder = dataclasses.replace(decoder, margin=halo)
        t0 = time.perf_counter()
        whole = decode_in_memory(pred, decoder)
        t1 = time.perf_counter()
        blocked = decode_blockwise(pred, decoder, block, "none")
        t2 = time.perf_counter()
        a = agreement(whole, blocked, block)
        same_order = bool((decode_watershed(pred, decoder, "raster") == blocked).all())
        lines.append(
            f"| {name} ({decoder.name}) | {a.objects} | {a.identical:.6f} | {a.are:.6f} | {a.cut} | "
            f"{a.differ} | {a.spanning} | {'yes' if same_order else 'no'} | {t1 - t0:.1f} / {t2 - t1:.1f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "PYTHONPATH=$PWD .venv/bin/python tests/benchmarks/bench_watershed.py " + " ".join(
            sys.argv[1:]
        )
        with RESULTS.open("a") as f:
            f.write(
                f"\n## Watershed decoders, blockwise against the whole volume ({now})\n\n`{command}`:\n\n"
            )
            f.write(table + "\n")


if __name__ == "__main__":
    main()
