"""Job documents are bounded before anything is built from them: size, nesting, values (aliases
expanded), self-reference. Each refusal is a SpecError, so ``pytc run`` exits 2 and the service 422."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from service.documents.loading import MAX_DEPTH, MAX_VALUES, check_bounds, load_job_file
from service.errors import SpecError
from service.kinds import parse_job
from service.kinds.base import ParseEnv

LAUGHS = """kind: inference
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_a_billion_laughs_is_refused_without_being_expanded(tmp_path: Path) -> None:
    assert len(LAUGHS) < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SpecError, match=f"more than {MAX_VALUES} values"):
        load_job_file(write(tmp_path, LAUGHS))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000  # expanded, it would be 9**9 strings: gigabytes


def test_aliases_within_the_bounds_still_work(tmp_path: Path) -> None:
    doc = load_job_file(
        write(tmp_path, "kind: inference\nbase: &p [17, 129, 129]\nwindow: {patch_size: *p}\n")
    )
    assert doc["window"]["patch_size"] == [17, 129, 129]


def test_a_document_that_refers_to_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="refers to itself"):
        load_job_file(write(tmp_path, "kind: inference\nmodel: &m {config: *m}\n"))


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, levels: int) -> None:
    text = "kind: inference\nmodel: {config: " + "[" * levels + "]" * levels + "}\n"
    with pytest.raises(SpecError, match="levels deep"):
        load_job_file(write(tmp_path, text))


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="at most"):
        load_job_file(write(tmp_path, "kind: inference\n#" + "x" * (1 << 20) + "\n"))


def test_a_deep_request_document_names_the_field(tmp_path: Path) -> None:
    config: dict[str, object] = {}
    node = config
    for _ in range(MAX_DEPTH + 5):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    doc = {"kind": "inference", "model": {"architecture": "unet3d", "config": config}}
    with pytest.raises(SpecError) as caught:
        parse_job(doc, ParseEnv((tmp_path,)))
    assert caught.value.field.startswith("model.config.x.x") and "levels deep" in caught.value.reason
    check_bounds({"a": [1, 2, {"b": 3}]})  # an ordinary document passes
