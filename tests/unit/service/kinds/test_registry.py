"""The registry of job kinds: names, the default kind, kinds added by name, their documents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.errors import SpecError
from service.kinds import documents, job_kind, job_kinds, kind_of, register_kinds, unregister_kind
from service.kinds.base import Target

STUB = "tests.unit.service.kinds.test_registry:STUB_KIND"


class StubKind:
    """Enough of a kind for the registry (the seam test runs a real one end to end)."""

    name = "stub"
    document = object
    parse = target = admit = run = summary = staticmethod(lambda *args: None)


STUB_KIND = StubKind()


@pytest.fixture
def stub() -> Iterator[None]:
    yield
    unregister_kind("stub")


def test_the_built_in_kinds_and_the_default() -> None:
    assert [k.name for k in job_kinds()][:2] == ["inference", "training"]
    assert kind_of({"input": {}}).name == "inference"
    assert kind_of({"kind": "training"}).name == "training"
    assert set(documents()) >= {"inference", "training"}


@pytest.mark.parametrize("doc", [{"kind": "segmentaton"}, {"kind": 3}, ["not", "a", "mapping"]])
def test_an_unknown_kind_is_a_spec_error_naming_the_known_ones(doc: object) -> None:
    with pytest.raises(SpecError) as caught:
        kind_of(doc)
    assert caught.value.field in ("kind", "")
    if caught.value.field == "kind" and isinstance(doc, dict) and isinstance(doc["kind"], str):
        assert "'inference'" in caught.value.reason and "'training'" in caught.value.reason


def test_a_kind_is_added_by_name(stub: None) -> None:
    register_kinds(f" {STUB} , ")
    assert job_kind("stub") is STUB_KIND and kind_of({"kind": "stub"}) is STUB_KIND


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.unit.service.kinds.nowhere:KIND", "cannot be loaded"),
        ("tests.unit.service.kinds.test_registry:MISSING", "cannot be loaded"),
        ("tests.unit.service.kinds.test_registry:Target", "has no 'name'"),
    ],
)
def test_a_kind_that_cannot_be_loaded_is_refused_by_name(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        register_kinds(spec)
    assert spec in str(caught.value)


def test_a_target_is_its_key_and_back() -> None:
    target = Target("/data/out.zarr", "pred")
    assert Target.from_key(target.key) == target and str(target) == "/data/out.zarr (pred)"
