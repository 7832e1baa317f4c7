"""What a hostile file costs now: the peak memory and time of a bomb's refusal, and what the bound
costs a good chunk.

Each bomb is refused in a fresh child process (``python -c``), which reports its peak RSS
(``ru_maxrss``) before and after, and the seconds the refusal took:

- zarr v3 chunk of (64, 256, 256) uint8 (4 MiB nominal) holding a 64 KiB zstd frame that declares
  13.5 GB (issue 13: 13.5 GB taken), one of 64 KiB that declares nothing and decodes to 2 GiB, and a
  zarr v2 chunk of ~2 MB of zlib that inflates to 2 GiB (issue 13: 11.1 GB for such a chunk);
- a 2 MB TorchScript-named zip archive of 2 GiB of zeros, looked at as admission does
  (``torch_file_problem``; issue 13: 2.7 GB and 22 s).

Then the per-chunk overhead of bounded decoding on the demo volume ((48, 384, 384) uint8, chunks
(16, 128, 128), zarr v3 zstd as ``make demo`` writes it): every chunk read through our input volume
(bounded) and through the same volume opened for writing (zarr's own pipeline), alternating, best
of ``--rounds``.

Prints a table and appends it, with the command and the machine's load, to RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numcodecs
import zarr
from zarr.codecs import ZstdCodec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.unit.volumes.bombs import stream_of_zeros, zstd_rle_frame  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")

CHILD_READ = """
import resource, sys, time
from volumes.box import Box
from volumes.open import open_volume
volume = open_volume(sys.argv[1], sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    volume.read(Box((0, 0, 0), volume.chunks))
    outcome = "read"
except Exception as err:
    outcome = type(err).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, before, after, time.perf_counter() - start)
"""

CHILD_MODEL = """
import resource, sys, time
from models.torch_files import torch_file_problem
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
problem = torch_file_problem(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("refused" if problem else "passed", before, after, time.perf_counter() - start)
"""


def child(code: str, *args: str) -> tuple[str, float, float, float]:
    """(outcome, peak RSS MiB before, peak RSS MiB after, seconds) from a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    outcome, before, after, seconds = out.stdout.split()
    return outcome, int(before) / 1024, int(after) / 1024, float(seconds)


def chunk_bombs(folder: Path) -> list[tuple[str, int, tuple[str, float, float, float]]]:
    rows = []
    v3 = zarr.open_group(str(folder / "in.zarr"), mode="w", zarr_format=3)
    v2 = zarr.open_group(str(folder / "in2.zarr"), mode="w", zarr_format=2)
    shape, chunks = (128, 256, 256), (64, 256, 256)
    cases = {
        "zarr v3, zstd frame declaring 13.5 GB": zstd_rle_frame(2**31, declare=13_500_000_000),
        "zarr v3, zstd frame declaring nothing, 2 GiB": zstd_rle_frame(2**31),
        "zarr v2, zlib stream of 2 GiB": stream_of_zeros("zlib", 2**31),
    }
    for i, (label, data) in enumerate(cases.items()):
        name = f"b{i}"
        if "v2" in label:
            v2.create_array(name, shape=shape, chunks=chunks, dtype="uint8", compressors=numcodecs.Zlib())
            path, key = folder / "in2.zarr", folder / "in2.zarr" / name / "0.0.0"
        else:
            v3.create_array(name, shape=shape, chunks=chunks, dtype="uint8", compressors=ZstdCodec())
            path, key = folder / "in.zarr", folder / "in.zarr" / name / "c/0/0/0"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(data)
        rows.append((label, len(data), child(CHILD_READ, str(path), name)))
    return rows


def model_bomb(folder: Path) -> tuple[int, tuple[str, float, float, float]]:
    path = folder / "bomb.pt"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb/data/0", "w", force_zip64=True) as m,
    ):
        for _ in range(2048):
            m.write(bytes(2**20))
    return path.stat().st_size, child(CHILD_MODEL, str(path))


def chunk_overhead(folder: Path, rounds: int) -> tuple[int, float, float]:
    """(chunks, best ms per chunk through our input volume, best through the same volume opened for
    writing, whose pipeline is zarr's own: the difference is the bound)."""
    from service.demo import DEMO_SEED, DEMO_SHAPE
    from volumes.box import Box
    from volumes.open import open_volume
    from volumes.synth import generate_em_volume, write_synth

    write_synth(folder / "em.zarr", generate_em_volume(DEMO_SHAPE, seed=DEMO_SEED), chunks=(16, 128, 128))
    ours, plain = (
        open_volume(folder / "em.zarr", "raw"),
        open_volume(folder / "em.zarr", "raw", mode="r+"),
    )
    boxes = [
        Box((z, y, x), ours.chunks)
        for z in range(0, ours.shape[0], ours.chunks[0])
        for y in range(0, ours.shape[1], ours.chunks[1])
        for x in range(0, ours.shape[2], ours.chunks[2])
    ]
    best_ours = best_plain = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for box in boxes:
            ours.read(box)
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        for box in boxes:
            plain.read(box)
        best_plain = min(best_plain, time.perf_counter() - start)
    return len(boxes), 1000 * best_ours / len(boxes), 1000 * best_plain / len(boxes)


def probe_latency(folder: Path) -> tuple[float, float]:
    """(seconds to check a small TorchScript model in a child process as the service now does, best
    of 3; seconds in process as before, the first time: later ones find the model cached)."""
    import warnings

    import torch

    from models.ref import ModelRef
    from workers.inference.tasks import inspect_model
    from workers.runtime.probe import probe_in_child

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1)).save(str(folder / "small.pt"))
    ref = ModelRef("torchscript", path=str(folder / "small.pt"))
    os.environ["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    inspect_model(ref, (17, 129, 129), "cpu")
    inline_s = time.perf_counter() - start
    child_s = []
    for _ in range(3):
        start = time.perf_counter()
        probe_in_child(inspect_model, (ref, (17, 129, 129), "cpu"), 60, None)
        child_s.append(time.perf_counter() - start)
    return min(child_s), inline_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bombs = chunk_bombs(folder)
        model_size, model = model_bomb(folder)
        chunks, ours_ms, plain_ms = chunk_overhead(folder, args.rounds)
        child_s, inline_s = probe_latency(folder)
    lines = [
        f"## Bombs: peak memory of a refusal, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({platform.machine()}, {os.cpu_count()} cores)",
        "",
        "Command: `.venv/bin/python tests/benchmarks/bench_bombs.py`  ",
        "Each bomb refused in a fresh process; peak RSS (ru_maxrss) of that process before the read and",
        "after the refusal (the difference is what the bomb cost), and the refusal's time.",
        "",
        "| bomb | on disk | outcome | peak RSS before / after (MiB) | time (s) | issue 13 before the bound |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    before_fix = ["13.5 GB", "(not measured)", "11.1 GB (a 2 MB zlib chunk)"]
    for (label, size, (outcome, before, after, seconds)), was in zip(bombs, before_fix, strict=True):
        lines.append(
            f"| {label}, 4 MiB chunk | {size / 1024:.0f} KiB | {outcome} | {before:.0f} / {after:.0f} | "
            f"{seconds:.3f} | {was} |"
        )
    outcome, before, after, seconds = model
    lines.append(
        f"| model zip of 2 GiB of zeros (torch_file_problem) | {model_size / 1024:.0f} KiB | {outcome} | "
        f"{before:.0f} / {after:.0f} | {seconds:.3f} | 2.7 GB, 22 s (TorchScript zip bomb) |"
    )
    overhead = 100 * (ours_ms / plain_ms - 1)
    lines += [
        "",
        f"Per-chunk cost of the bound on the demo volume (48x384x384 uint8, {chunks} zstd chunks of "
        f"16x128x128, best of {args.rounds}): {ours_ms:.2f} ms per chunk through our input volume "
        f"against {plain_ms:.2f} ms with zarr's own pipeline ({overhead:+.1f} %).",
        "",
        f"Model check of a small TorchScript model on a (17, 129, 129) patch: {child_s:.2f} s (best of 3) in "
        f"a child process as the service now runs it (a Python importing torch, then the check), "
        f"{inline_s:.2f} s in a process that has torch already, as before (once per model: the service "
        "remembers a checked model by its files' size and mtime). "
        f"Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as results:
            results.write("\n" + text)


if __name__ == "__main__":
    main()
