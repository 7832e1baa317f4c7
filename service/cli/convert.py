"""``pytc convert BASE.yaml [EXP.yaml] [KEY VALUE ...] [--inference] [--checkpoint C] -o JOB.yaml``.

PyTorch Connectomics v1 configuration files (and the trailing options PyTC's ``main.py`` takes) as
our job document, written for review: the same conversion ``pytc run --pytc-config`` and a
``kind: pytc_config`` job go through (:mod:`service.kinds.pytc_config`). A key that cannot be
honoured is exit 2 naming it; nothing is written. Several input volumes (``IMAGE_NAME: a.h5@b.h5``)
are one job each, as PyTC predicts each: ``-o JOB.yaml`` writes ``JOB-0.yaml``, ``JOB-1.yaml``, ...
(in the order PyTC predicts them), stdout a YAML stream (``---`` between jobs).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from service.cli.common import EXIT_OK, EXIT_SPEC, spec_failure
from service.errors import SpecError

# A trailing KEY of PyTC's options: upper-case dotted names (DATASET.INPUT_PATH)
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
MAX_CONFIG_BYTES = 1 << 16  # as the kind's document; PyTC's own configs are < 5 KB


def add_convert_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = commands.add_parser(
        "convert",
        help="a PyTorch Connectomics v1 config as our job document",
        description="Write the job document of a PyTorch Connectomics v1 experiment: BASE.yaml "
        "(PyTC's --config-base), EXP.yaml (--config-file) and trailing KEY VALUE options, merged "
        "with yacs's rules over PyTC's defaults. --inference writes an inference job (as PyTC's "
        "--inference), else a training job. A key that cannot be honoured is refused by name (exit 2).",
    )
    convert.add_argument("config", nargs="+", metavar="BASE.yaml [EXP.yaml] [KEY VALUE ...]")
    add_pytc_flags(convert)
    convert.add_argument(
        "-o", "--output", type=Path, metavar="JOB.yaml", help="where to write (default: stdout)"
    )
    convert.add_argument("--data-root", action="append", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    convert.set_defaults(command=convert_command)


def add_pytc_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inference", action="store_true", help="an inference job (PyTC's --inference)")
    parser.add_argument("--checkpoint", metavar="C", help="PyTC's --checkpoint: the weights to run or resume")


def pytc_document(items: Sequence[str], inference: bool, checkpoint: str | None) -> dict[str, Any]:
    """The ``kind: pytc_config`` document of ``BASE.yaml [EXP.yaml] [KEY VALUE ...]``."""
    files = [item for item in items[:2] if not _KEY.match(item) and item.lower().endswith((".yaml", ".yml"))]
    if not files:
        raise SpecError(
            "BASE.yaml", f"the first argument is PyTC's base config (a .yaml file), got {items[0]!r}"
        )
    overrides = list(items[len(files) :])
    doc: dict[str, Any] = {"kind": "pytc_config", "base": _read(files[0]), "inference": inference}
    if len(files) == 2:
        doc["experiment"] = _read(files[1])
    if overrides:
        doc["overrides"] = overrides
    if checkpoint is not None:
        doc["checkpoint"] = checkpoint
    return doc


def _read(path: str) -> str:
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise SpecError(path, f"a PyTC config is at most {MAX_CONFIG_BYTES} bytes")
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(path, f"cannot read the config: {err}") from None


def convert_command(args: argparse.Namespace) -> int:
    from service.cli import data_roots
    from service.kinds.pytc_config import convert_document

    roots = tuple(Path(root).resolve() for root in data_roots(args.data_root, os.environ))
    try:
        conversion = convert_document(pytc_document(args.config, args.inference, args.checkpoint), roots)
    except SpecError as err:
        return spec_failure(err)
    header = "".join(f"# note: {note}\n" for note in conversion.notes)
    documents = conversion.documents
    if len(documents) == 1:
        texts = [(args.output, header + yaml.safe_dump(documents[0], sort_keys=False))]
    else:  # one job per volume, as PyTC predicts each: JOB-0.yaml, JOB-1.yaml, ... (a YAML stream on stdout)
        texts = [
            (
                None
                if args.output is None
                else args.output.with_name(f"{args.output.stem}-{i}{args.output.suffix}"),
                header + f"# volume {i + 1} of {len(documents)}: {doc['input']['path']} -> "
                f"{doc['output']['path']} ({doc['output']['dataset']})\n"
                + yaml.safe_dump(doc, sort_keys=False),
            )
            for i, doc in enumerate(documents)
        ]
    for i, (path, text) in enumerate(texts):
        if path is None:
            sys.stdout.write(("---\n" if i else "") + text)
        else:
            path.write_text(text, encoding="utf-8")
            print(path)
    for note in conversion.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK if documents else EXIT_SPEC
