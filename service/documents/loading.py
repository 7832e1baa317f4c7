"""Job documents as text: reading a job file, and the canonical JSON a parsed job records.

A job file is YAML (hence also JSON), read with a safe loader that refuses duplicate keys instead of
keeping the last one; syntax errors name the file, line and column. The canonical text is what a
job carries as ``document`` (recorded in its output's attributes and in its checkpoints): key order
and spacing do not change it.

A document is bounded before anything is built from it, from a file or a request alike: at most
:data:`MAX_DOCUMENT_BYTES` of text, :data:`MAX_DEPTH` levels of nesting and :data:`MAX_VALUES`
values, YAML aliases counted as the copies they stand for. A "billion laughs" document of a few
hundred bytes (aliases of aliases) is refused while it is still a graph of a few dozen nodes,
instead of being expanded into gigabytes, and no nesting reaches Python's recursion limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workers.errors import SpecError

MAX_DOCUMENT_BYTES = 1 << 20  # as the REST service's request body
MAX_DEPTH = 32  # a job document nests a few levels; a model config a few more
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a job file (YAML, hence also JSON). Syntax errors name the file, line and column."""
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise SpecError(str(source), f"a job file is at most {MAX_DOCUMENT_BYTES} bytes, this one {size}")
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(source), "no such job file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(str(source), f"cannot read the job file: {err}") from err
    try:
        doc = _load_bounded(text, str(source))
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


def load_yaml_text(text: str, where: str) -> Any:
    """YAML text from a request or a file (a PyTC config), bounded as a job document is; a syntax
    error, or a value YAML cannot build (an integer of more digits than Python converts), is a
    SpecError on ``where``."""
    try:
        return _load_bounded(text, where)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise SpecError(at, f"invalid YAML: {err.problem or err.context}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise SpecError(where, f"invalid YAML: {err}") from None


def _load_bounded(text: str, where: str) -> Any:
    """YAML with a safe loader, its node graph checked against the bounds before it is built."""
    loader = _UniqueKeyLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpecError(where, f"the document nests more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_graph(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_graph(root: yaml.Node, where: str) -> None:
    """Depth and values of the document ``root`` stands for, aliases expanded: each node's expanded
    size is computed once (memoised), so checking costs the graph's size, not the expansion's."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(where, f"the document nests more than {MAX_DEPTH} levels deep")
        children = _children(node)
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_VALUES:
                raise SpecError(
                    where,
                    f"the document stands for more than {MAX_VALUES} values (aliases of aliases?); "
                    "write it out plainly",
                )
            continue
        if id(node) in on_path:
            raise SpecError(where, "the document refers to itself (a YAML alias inside its own anchor)")
        if id(node) in sizes:
            continue
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_bounds(doc: Any, where: str = "") -> None:
    """A document already built (a request's JSON): at most :data:`MAX_DEPTH` levels of nesting and
    :data:`MAX_VALUES` values. The SpecError names the deepest field it reached."""
    stack: list[tuple[Any, str, int]] = [(doc, where, 1)]
    values = 0
    while stack:
        value, field, depth = stack.pop()
        values += 1
        if depth > MAX_DEPTH:
            raise SpecError(field, f"nests more than {MAX_DEPTH} levels deep")
        if values > MAX_VALUES:
            raise SpecError(where, f"the document holds more than {MAX_VALUES} values")
        if isinstance(value, Mapping):
            stack.extend((v, f"{field}.{k}" if field else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value))


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
