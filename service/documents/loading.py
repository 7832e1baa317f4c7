"""Job documents as text: reading a job file, and the canonical JSON a parsed job records.

A job file is YAML (hence also JSON), read with a safe loader that refuses duplicate keys instead of
keeping the last one; syntax errors name the file, line and column. The canonical text is what a
job carries as ``document`` (recorded in its output's attributes and in its checkpoints): key order
and spacing do not change it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workers.errors import SpecError


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a job file (YAML, hence also JSON). Syntax errors name the file, line and column."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(source), "no such job file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(str(source), f"cannot read the job file: {err}") from err
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        raise SpecError(where, f"invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise SpecError(str(source), f"invalid YAML: {err}") from err
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else type(doc).__name__
        raise SpecError(str(source), f"expected a mapping of job fields (kind, input, ...), got {got}")
    return doc


def canonical_json(doc: Mapping[str, Any]) -> str:
    """The document as compact JSON with sorted keys; values JSON cannot hold (a YAML date) as text."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int | float | bool | None):
                continue  # unhashable or odd keys are left to the schema to refuse
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
