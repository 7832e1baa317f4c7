"""``pytc``: run a job without a server, make synthetic data, score a segmentation, and talk to the
service.

``pytc run JOB.yaml`` runs one job of any kind (:mod:`service.cli.run`); ``pytc synth`` writes a
synthetic EM-like volume; ``pytc evaluate`` scores a segmentation against its ground truth
(:mod:`service.cli.evaluate`); the client commands (``submit``, ``status``, ``wait``, ``cancel``,
``jobs``, ``models``: :mod:`service.cli.client_commands`) talk to ``pytc-serve``. Exit codes: 0
succeeded, 1 the job failed, 2 the job (or the command line) is invalid and nothing was written,
130 cancelled or interrupted (running the same job again resumes it).

Heavy modules (distributed, the engines) are imported inside the commands, so ``pytc --help`` stays
quick and this package never pulls in torch.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.common import EXIT_OK, EXIT_SPEC, positive_int
from service.cli.help import PYTC_EPILOG
from workers.errors import SpecError
from workers.version import add_version_flag

if TYPE_CHECKING:
    from service.documents.sections import Root

__all__ = ["build_parser", "data_roots", "main", "start_up_done"]

SYNTH_SHAPE = (64, 512, 512)
SYNTH_VOXEL_SIZE_NM = (30.0, 8.0, 8.0)
SYNTH_CHUNKS = (32, 256, 256)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytc`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error (argparse exits 2)
        return stop.code if isinstance(stop.code, int) else EXIT_SPEC
    if not hasattr(args, "command"):
        parser.print_help(sys.stderr)
        return EXIT_SPEC
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if kinds := os.environ.get("PYTC_JOB_KINDS", ""):  # a lab's own job kinds (service.kinds)
        from service.kinds import register_kinds

        try:
            register_kinds(kinds)
        except ValueError as err:
            print(f"error: PYTC_JOB_KINDS: {err}", file=sys.stderr)
            return EXIT_SPEC
    from service.cli.run import run_command

    if args.command is not run_command:
        start_up_done()  # only run has a start-up worth pausing the collector for
    return int(args.command(args))


def build_parser() -> argparse.ArgumentParser:
    from service.cli.client_commands import add_client_commands
    from service.cli.convert import add_convert_command
    from service.cli.evaluate import add_evaluate_command
    from service.cli.run import add_run_command
    from service.cli.view import add_view_command

    parser = argparse.ArgumentParser(
        prog="pytc",
        description="Exact chunked 3D inference and training over zarr/N5 volumes, on Dask.",
        epilog=PYTC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_flag(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_run_command(commands)
    add_convert_command(commands)
    _add_synth_command(commands)
    add_evaluate_command(commands)
    add_client_commands(commands)
    add_view_command(commands)
    return parser


def data_roots(cli_roots: Sequence[str] | None, environ: Mapping[str, str]) -> list[Root]:
    """``--data-root`` values, else ``PYTC_DATA_ROOTS`` (``:``-separated; ``s3://bucket/prefix``
    entries keep their colon), else the current directory; resolved (a SpecError naming
    ``PYTC_DATA_ROOTS`` for a URL that is not one)."""
    from service.documents.sections import resolved_root, split_roots

    raw = list(cli_roots or split_roots(environ.get("PYTC_DATA_ROOTS", ""))) or [str(Path.cwd())]
    try:
        return [resolved_root(root) for root in raw]
    except ValueError as err:
        raise SpecError("PYTC_DATA_ROOTS", str(err)) from None


def start_up_done() -> None:
    """End of start-up, where the ``pytc`` program paused the garbage collector (service.entry):
    freeze what start-up made, then collect again; a no-op where the collector runs.

    Start-up (the engine's and Dask's modules, the embedded cluster, torch and the model, imported
    and loaded by the model check) makes a few million objects that live as long as the process.
    The collector walked them again and again while they were made: four full collections, 0.4 s
    of a ``pytc run``'s start, most on the worker's thread while it imported torch. Once it is over,
    ``gc.freeze`` sets what was made aside (no later collection walks it; none of it is garbage)
    and the collector runs as usual for the job itself. ``run`` calls this after the job's checks,
    every other command as soon as it starts."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _add_synth_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    synth = commands.add_parser(
        "synth",
        help="write a synthetic EM-like volume with ground truth (raw, mito, cells)",
        description="Write a synthetic EM-like volume into one zarr group: raw (uint8) and its ground "
        "truth, mito (0/1) and cells (instance ids, 0 on membranes). Prints OUT.zarr.",
    )
    synth.add_argument("out", type=Path, metavar="OUT.zarr", help="the zarr group to write")
    synth.add_argument(
        "--shape", type=positive_int, nargs=3, default=list(SYNTH_SHAPE), metavar=("Z", "Y", "X"),
        help=f"in voxels (default: {_spaced(SYNTH_SHAPE)})",
    )  # fmt: skip
    synth.add_argument("--seed", type=int, default=0, help="the same seed makes the same volume (default: 0)")
    synth.add_argument(
        "--voxel-size", type=float, nargs=3, default=list(SYNTH_VOXEL_SIZE_NM), metavar=("Z", "Y", "X"),
        help=f"in nm, recorded in the arrays' metadata (default: {_spaced(SYNTH_VOXEL_SIZE_NM)})",
    )  # fmt: skip
    synth.add_argument(
        "--chunks", type=positive_int, nargs=3, default=list(SYNTH_CHUNKS), metavar=("Z", "Y", "X"),
        help=f"chunk shape of every array (default: {_spaced(SYNTH_CHUNKS)})",
    )  # fmt: skip
    synth.add_argument(
        "--format", choices=["zarr3", "zarr2"], default="zarr3", help="zarr format version (default: zarr3)"
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace OUT.zarr if it exists (default: refuse, exit 2)"
    )
    synth.set_defaults(command=synth_command)


def _spaced(values: Sequence[object]) -> str:
    return " ".join(str(v) for v in values)


def synth_command(args: argparse.Namespace) -> int:
    """Write ``raw`` (uint8), ``mito`` and ``cells`` into one zarr group."""
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return EXIT_SPEC
    from volumes.synth import generate_em_volume, write_synth

    volume = generate_em_volume(args.shape, seed=args.seed, voxel_size_nm=args.voxel_size)
    write_synth(args.out, volume, chunks=args.chunks, format=args.format)
    print(args.out)
    return EXIT_OK
