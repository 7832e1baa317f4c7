"""The examples of ``README.md`` and ``docs/*.md`` run as written, as a new user would run them.

Each Markdown file is followed from top to bottom in a fresh folder that stands in for the root of
a clone: it holds the shipped demo model where the repository has it (``models/weights/``) and the
clone's ``.venv`` (a link), and nothing else. A YAML block whose first line names a file
(``# job.yaml``) is saved under that name when the reader reaches it; every shell block (``sh``,
``bash``, ``shell``) runs there with bash, in order, and must succeed. A block that cannot run
here (a server that runs until stopped, another machine's address, the repository's own make
targets) says so on the line before its fence: ``<!-- not run: why -->``.

Every YAML block that is a job document (a ``kind``, or an inference job's ``input`` and
``model``) must parse as one (:func:`service.kinds.parse_job`), once the commands of the file ran
(a model it names may be registered by them); a block of a few fields (a job's optional sections)
must parse merged into one of the job documents before it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import SpecError
from service.kinds import parse_job
from service.kinds.base import ParseEnv, model_resolver
from service.store.model_file import FileModelRegistry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell"}
YAML = {"yaml", "yml"}
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
FILE_NAME = re.compile(r"^#\s*([\w.-]+\.ya?ml)\s*$")


@dataclass(frozen=True)
class Block:
    source: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # why, when the Markdown marks it illustrative

    def __str__(self) -> str:
        return f"{self.source.relative_to(REPO)}:{self.line} ({self.lang or 'no language'})"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        end = next(
            (j for j in range(index + 1, len(lines)) if lines[j].startswith(fence[0] * len(fence))),
            len(lines),
        )
        before = next((lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        marked = NOT_RUN.match(before)
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(path, index + 1, lang, text, marked.group(1) if marked else None))
        index = end + 1
    return found


def is_job(doc: Any) -> bool:
    return isinstance(doc, dict) and ("kind" in doc or {"input", "model"} <= doc.keys())


def merged(base: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``fields`` laid over it, mapping by mapping."""
    result = dict(base)
    for key, value in fields.items():
        old = result.get(key)
        result[key] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return result


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh folder with what a clone's root gives a new user: the shipped model and ``.venv``."""
    shutil.copytree(REPO / "models" / "weights", tmp_path / "models" / "weights")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTC_", "DASK_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTC_TORCH_THREADS"] = "2"
    env["HOME"] = str(folder)
    return env


def follow(path: Path, folder: Path) -> Iterator[tuple[Block, str]]:
    """Do what ``path`` says, block by block, in ``folder``; yields each block and what was done."""
    for block in blocks(path):
        if block.not_run is not None:
            yield block, f"not run: {block.not_run}"
        elif block.lang in YAML:
            first = block.text.splitlines()[0] if block.text.strip() else ""
            name = FILE_NAME.match(first)
            if name is not None:
                (folder / name.group(1)).write_text(block.text)
            yield block, f"saved as {name.group(1)}" if name else "read"
        elif block.lang in SHELL:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.text],
                cwd=folder,
                env=_environment(folder),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, (
                f"{block} exited {proc.returncode}:\n{block.text}\n{proc.stderr[-3000:]}"
            )
            yield block, "ran"
        else:
            yield block, "not code"


def check_documents(path: Path, folder: Path) -> int:
    """Every job document of ``path`` parses, and every block of fields merged into one of the job
    documents before it (the latest first)."""
    roots = (folder.resolve(),)
    env = ParseEnv(roots, model_resolver(FileModelRegistry(folder / ".pytc"), roots))
    jobs: list[dict[str, Any]] = []
    parsed = 0
    for block in blocks(path):
        if block.lang not in YAML:
            continue
        doc = yaml.safe_load(block.text)
        if is_job(doc):
            jobs.append(doc)
            parse_job(doc, env)  # SpecError names the field that does not parse
        elif isinstance(doc, dict) and jobs:
            errors = []
            for job in reversed(jobs):
                try:
                    parse_job(merged(job, doc), env)
                    break
                except SpecError as err:
                    errors.append(str(err))
            else:
                pytest.fail(f"{block}: these fields fit no job document before them: {errors}")
        else:
            pytest.fail(f"{block}: neither a job document nor fields of one before it: {doc!r}")
        parsed += 1
    return parsed


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_example_runs_as_written(path: Path, clone: Path) -> None:
    done = list(follow(path, clone))  # every shell block not marked "not run" succeeded
    parsed = check_documents(path, clone)
    if path.name in ("README.md", "training.md"):  # the ones with examples a user follows
        ran = [str(block) for block, what in done if what == "ran"]
        saved = [what for _, what in done if what.startswith("saved as")]
        assert ran and saved and parsed, f"nothing was followed in {path.name}: the test would be vacuous"


def test_marked_blocks_say_why_and_everything_else_is_followed() -> None:
    """The marker is recognised where it stands, and only there (the rule above is not vacuous)."""
    readme = {block.line: block for block in blocks(REPO / "README.md")}
    marked = [block for block in readme.values() if block.not_run]
    assert marked and all(len(block.not_run or "") > 10 for block in marked)
    assert any(block.lang in SHELL and not block.not_run for block in readme.values())
    assert any("pytc-serve" in block.text for block in marked)  # a server is never started here
