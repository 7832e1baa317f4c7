"""The toolkit every document is built from: validation naming dotted fields, confinement of paths."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from service.documents.sections import (
    NormalizeField,
    NormalizeSection,
    PosTriple,
    Section,
    closest_name,
    dataset_name,
    frozen_config,
    require_kind,
    resolve_path,
    resolved_roots,
    validate,
)
from service.errors import PathOutsideRootsError
from workers.errors import SpecError


class Inner(Section):
    size: PosTriple


class Outer(Section):
    inner: Inner
    items: list[Inner] = []
    normalize: NormalizeField = NormalizeSection()


def test_validate_keeps_every_problem_with_dotted_fields() -> None:
    with pytest.raises(SpecError) as caught:
        validate(Outer, {"inner": {"sise": [1, 1, 1]}, "items": [{"size": [1, 0, 1]}]})
    problems = dict(caught.value.errors)
    assert problems["inner.sise"] == "unknown field; did you mean 'size'?"
    assert problems["inner.size"] == "required"
    assert problems["items[0].size[1]"].startswith("Input should be greater than 0")


def test_unknown_field_without_a_close_name_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as caught:
        validate(Outer, {"inner": {"size": [1, 1, 1]}, "zzz": 1})
    assert dict(caught.value.errors)["zzz"] == "unknown field; expected one of: inner, items, normalize"


@pytest.mark.parametrize(
    ("typed", "known", "suggested"),
    [
        ("formt", ["format", "heads"], "format"),  # a letter missing
        ("chunk", ["chunks", "heads"], "chunks"),
        ("fromat", ["format"], "format"),  # two letters swapped
        ("Dtype", ["dtype"], "dtype"),  # case aside
        ("pach_size", ["pad_size", "patch_size"], "patch_size"),  # the nearest wins
        ("blok_shpae", ["block_shape"], "block_shape"),  # two slips in ten letters
        ("shards", ["heads", "chunks"], None),  # three slips in six letters: not a typo
        ("hed", ["heads"], None),
        ("x", ["y", "z"], None),
    ],
)
def test_closest_name_is_a_typo_not_a_resemblance(
    typed: str, known: list[str], suggested: str | None
) -> None:
    assert closest_name(typed, known) == suggested


def test_sections_are_frozen() -> None:
    parsed = validate(Outer, {"inner": {"size": [1, 2, 3]}, "normalize": "none"})
    assert parsed.normalize == NormalizeSection(mode="none")
    with pytest.raises(ValueError, match="frozen"):
        parsed.inner.size = [1, 1, 1]  # type: ignore[misc]


def test_require_kind(tmp_path: Path) -> None:
    assert require_kind({}, "inference") == {}
    with pytest.raises(SpecError, match="expected 'training' here, got no kind, which means inference"):
        require_kind({}, "training")
    with pytest.raises(SpecError) as caught:
        require_kind("kind: training", "training")
    assert caught.value.field == "" and "mapping" in caught.value.reason


def test_resolve_path_relative_to_the_first_root(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    roots = resolved_roots([first, second])
    assert resolve_path("x/y.zarr", roots, "f") == first / "x" / "y.zarr"
    assert resolve_path(str(second / "z"), roots, "f") == second / "z"
    with pytest.raises(PathOutsideRootsError) as caught:
        resolve_path("../c", roots, "input.path")
    assert caught.value.field == "input.path" and str(tmp_path / "c") in caught.value.reason


def test_a_pattern_is_refused_when_a_file_it_matches_links_out_of_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "slices").mkdir(parents=True)
    outside.mkdir()
    for name in ("s0.png", "s1.png"):
        (root / "slices" / name).write_bytes(b"inside")
    roots = resolved_roots([root])
    assert resolve_path("slices/*.png", roots, "input.path") == root / "slices" / "*.png"
    (outside / "secret.png").write_bytes(b"outside")
    (root / "slices" / "s2.png").symlink_to(outside / "secret.png")
    with pytest.raises(PathOutsideRootsError) as caught:
        resolve_path("slices/*.png", roots, "input.path")
    assert caught.value.field == "input.path"
    assert str(outside / "secret.png") in caught.value.reason and "s2.png" in caught.value.reason


@pytest.mark.parametrize(("raw", "name"), [("/a//b/", "a/b"), ("a\\b", "a/b"), ("./a/./b", "a/b")])
def test_dataset_names_are_normalised(raw: str, name: str) -> None:
    assert dataset_name(raw, "input.dataset") == name


def test_frozen_config_is_hashable_and_refuses_nesting() -> None:
    assert frozen_config({"b": [1, [2]], "a": 1}) == (("a", 1), ("b", (1, (2,))))
    with pytest.raises(SpecError) as caught:
        frozen_config({"nested": {"a": 1}})
    assert caught.value.field == "model.config.nested"


def test_spec_error_pickles_with_all_its_errors() -> None:
    err = PathOutsideRootsError("input.path", "outside", errors=[("input.path", "outside"), ("b", "c")])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is PathOutsideRootsError and back.errors == err.errors and str(back) == str(err)
    assert isinstance(back, PermissionError) and str(back).startswith("input.path: outside")
