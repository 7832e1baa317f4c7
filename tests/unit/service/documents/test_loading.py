"""Job files (YAML, hence JSON; safe, no duplicate keys; errors name file, line and column) and the
canonical JSON a job records."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from service.documents.loading import canonical_json, load_job_file
from tests.unit.service.documents.examples import minimal
from workers.errors import SpecError


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("kind: inference\ninput:\n  path: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_job_file(job_file)
    assert caught.value.field.startswith(f"{job_file}:")
    assert "invalid YAML" in caught.value.reason


def test_yaml_duplicate_key_is_refused(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("window:\n  stride: [1, 1, 1]\n  stride: [2, 2, 2]\n")
    with pytest.raises(SpecError) as caught:
        load_job_file(job_file)
    assert caught.value.field == f"{job_file}:3:3" and "duplicate key 'stride'" in caught.value.reason


@pytest.mark.parametrize(("text", "reason"), [("", "empty"), ("- a\n- b\n", "list")])
def test_job_file_must_hold_a_mapping(tmp_path: Path, text: str, reason: str) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(text)
    with pytest.raises(SpecError, match=reason):
        load_job_file(job_file)


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such job file"):
        load_job_file(tmp_path / "nope.yaml")


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("kind: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_job_file(job_file)


def test_json_job_file(tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(minimal()))
    assert load_job_file(job_file) == minimal()


def test_canonical_json_ignores_key_order_and_spacing() -> None:
    doc = minimal()
    shuffled = dict(reversed(list(doc.items())))
    assert (
        canonical_json(doc)
        == canonical_json(shuffled)
        == json.dumps(doc, sort_keys=True, separators=(",", ":"))
    )


def test_canonical_json_writes_what_yaml_adds_as_text() -> None:
    assert canonical_json({"when": datetime.date(2024, 5, 1)}) == '{"when":"2024-05-01"}'
