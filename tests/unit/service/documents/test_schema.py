"""The published JSON Schema of job documents: generated from the models that parse, it accepts what
the parsers accept (every shorthand, the contract's examples) and refuses what they refuse."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import jsonschema_rs
import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from service.documents.inference import InferenceDocument, parse_inference
from service.documents.schema import REF, document_schemas
from service.documents.sections import PosTriple, Section
from service.documents.training import TrainingDocument, parse_training
from tests.unit.service.documents.examples import (
    CONTRACT_INFERENCE,
    CONTRACT_TRAINING,
    minimal,
    minimal_training,
)
from workers.errors import SpecError

DOCUMENTS: dict[str, type[BaseModel]] = {"inference": InferenceDocument, "training": TrainingDocument}
SCHEMAS = document_schemas(DOCUMENTS)
VALIDATOR = jsonschema_rs.Draft202012Validator(
    {"components": {"schemas": SCHEMAS}, "$ref": REF + "JobDocument"}
)


def changed(doc: dict[str, Any], **dotted: Any) -> dict[str, Any]:
    """``doc`` with dotted fields set (``window__overlap`` for ``window.overlap``)."""
    new = copy.deepcopy(doc)
    for name, value in dotted.items():
        *parents, last = name.split("__")
        node = new
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return new


def inference(**dotted: Any) -> dict[str, Any]:
    return changed(minimal(), **dotted)


def training(**dotted: Any) -> dict[str, Any]:
    return changed(minimal_training(), **dotted)


def parser(doc: dict[str, Any]) -> Callable[[dict[str, Any], list[Path]], Any]:
    return parse_training if doc.get("kind") == "training" else parse_inference


SHORTHANDS = {
    "normalize: auto": inference(input__normalize="auto"),
    "normalize: none": inference(input__normalize="none"),
    "normalize: null": inference(input__normalize=None),
    "normalize: {mean, std}": inference(input__normalize={"mean": 0.5, "std": 0.25}),
    "overlap: 0.5": inference(window__overlap=0.5),
    "overlap: 0": inference(window__overlap=0),
    "overlap per axis": inference(window__overlap=[0, 0.5, 0.25]),
    "activation: sigmoid": inference(output__activation="sigmoid"),
    "activation: [softmax]": inference(output__activation=["softmax"]),
    "output targets: binary": inference(output__targets="binary"),
    "output targets: [affinity, none]": inference(output__heads=[3, 1], output__targets=["affinity", "none"]),
    "kind: inference": inference(kind="inference"),
    "targets: [binary]": training(targets=["binary"]),
    "targets: names and mappings": training(
        targets=["binary", {"kind": "semantic", "classes": 3}], model__config__out_channels=4
    ),
    "schedule: constant": training(solver__schedule="constant"),
    "schedule: warmup_cosine": training(solver__schedule="warmup_cosine"),
    "schedule: {kind, milestones}": training(solver__schedule={"kind": "step", "milestones": [5]}),
    "reject: false": training(sampling__reject=False),
    "reject: null": training(sampling__reject=None),
    "reject: {min_foreground}": training(sampling__reject={"min_foreground": 10}),
    "augment: true": training(sampling__augment=True),
    "augment: false": training(sampling__augment=False),
    "augment: null": training(sampling__augment=None),
    "augment: {elastic}": training(sampling__augment={"elastic": 0.5}),
    "data normalize: none": training(data__normalize="none"),
    "data normalize: {mean, std}": training(data__normalize={"mean": 0.0, "std": 1.0}),
}


@pytest.mark.parametrize("doc", SHORTHANDS.values(), ids=SHORTHANDS.keys())
def test_every_shorthand_the_parsers_accept_the_schema_accepts(doc: dict[str, Any], tmp_path: Path) -> None:
    parser(doc)(doc, [tmp_path])
    assert VALIDATOR.is_valid(doc), [e.message for e in VALIDATOR.iter_errors(doc)]


def test_the_contract_examples_are_valid() -> None:
    contract_training = yaml.safe_load(CONTRACT_TRAINING)
    contract_training["checkpoint"]["resume_from"] = "runs/mito/checkpoint_01000.pth.tar"  # as written there
    for doc in (yaml.safe_load(CONTRACT_INFERENCE), contract_training):
        assert VALIDATOR.is_valid(doc), [e.message for e in VALIDATOR.iter_errors(doc)]


WRONG = {
    "unknown top-level field": {**inference(), "windwo": {}},
    "unknown window field": inference(window__strid=[8, 64, 64]),
    "unknown training field": training(solver__lrr=0.1),
    "unknown kind": inference(kind="train"),
    "kind: null": inference(kind=None),
    "training without kind": {k: v for k, v in training().items() if k != "kind"},
    "blending: linear": inference(window__blending="linear"),
    "activation: relu": inference(output__activation="relu"),
    "activation: [relu]": inference(output__activation=["relu"]),
    "activation: []": inference(output__activation=[]),
    "normalize: zscore": inference(input__normalize="zscore"),
    "normalize: {std: 0}": inference(input__normalize={"std": 0}),
    "overlap: 1.0": inference(window__overlap=1.0),
    "overlap: [0.5, 0.5]": inference(window__overlap=[0.5, 0.5]),
    "tta variants: 2": inference(window__tta={"variants": 2}),
    "tta variants: true": inference(window__tta={"variants": True}),
    "patch_size of two": inference(window__patch_size=[17, 129]),
    "overwrite: yes": inference(output__overwrite="yes"),
    "missing window": {k: v for k, v in inference().items() if k != "window"},
    "targets: [contour]": training(targets=["contour"]),
    "targets: []": training(targets=[]),
    "targets: binary": training(targets="binary"),
    "schedule: cosine": training(solver__schedule="cosine"),
    "schedule: null": training(solver__schedule=None),
    "reject: true": training(sampling__reject=True),
    "augment: yes": training(sampling__augment="yes"),
    "register_as: bad/name": training(register_as="bad/name"),
}


@pytest.mark.parametrize("doc", WRONG.values(), ids=WRONG.keys())
def test_what_the_parsers_refuse_for_its_shape_the_schema_refuses(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(SpecError):
        parser(doc)(doc, [tmp_path])
    assert not VALIDATOR.is_valid(doc)


def test_the_schema_names_no_python_internals() -> None:
    text = json.dumps(SCHEMAS)
    for internal in ("_Section", "CONTRACT.md", "shared/", ":class:", ":func:", "``", "service."):
        assert internal not in text
    assert not re.search(r'"_[A-Za-z]', text)  # no private name as a key or a value
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", name) for name in SCHEMAS), sorted(SCHEMAS)


def test_job_document_is_any_document_and_speaks_to_users() -> None:
    job = SCHEMAS["JobDocument"]
    assert job["anyOf"] == [{"$ref": REF + "InferenceDocument"}, {"$ref": REF + "TrainingDocument"}]
    assert job["description"].startswith("A job document") and "inference (the default" in job["description"]


def test_the_order_of_the_documents_does_not_matter() -> None:
    backwards = document_schemas(dict(reversed(list(DOCUMENTS.items()))))
    assert json.dumps(backwards) == json.dumps(SCHEMAS)


def other_document() -> type[Section]:
    class RoiSection(Section):  # the shared section's name, another shape
        corner: PosTriple

    class OtherDocument(Section):
        kind: Literal["other"]
        roi: RoiSection

    return OtherDocument


def test_one_section_name_defined_twice_differently_is_an_error_in_either_order() -> None:
    other = other_document()
    with pytest.raises(ValueError, match="'RoiSection' differently"):
        document_schemas({"inference": InferenceDocument, "other": other})
    with pytest.raises(ValueError, match="'RoiSection' differently"):
        document_schemas({"other": other, "inference": InferenceDocument})


def test_a_document_must_be_of_its_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        document_schemas({"training": InferenceDocument})


def section_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """``model`` and every model its fields hold, however deep."""
    if model not in seen:
        seen.add(model)
        for field in model.model_fields.values():
            for inner in _models_in(field.annotation):
                section_models(inner, seen)
    return seen


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def test_every_before_validator_declares_what_it_accepts() -> None:
    """A validator that widens what a field accepts must say so to the schema; the one exception
    only narrows (``variants: true`` would pass as 1)."""
    narrowing = {("TtaSection", "_not_a_bool")}
    undeclared = [
        (model.__name__, name)
        for document in DOCUMENTS.values()
        for model in section_models(document, set())
        for name, decorator in model.__pydantic_decorators__.field_validators.items()
        if decorator.info.mode == "before" and decorator.info.json_schema_input_type is PydanticUndefined
    ]
    assert sorted(set(undeclared) - narrowing) == []
