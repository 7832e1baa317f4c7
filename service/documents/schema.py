"""The job documents' JSON Schema, for the OpenAPI document, generated from the models that parse.

Every shorthand a parser accepts (``normalize: auto``, ``overlap: 0.5``, ``targets: [binary]``, ...)
is declared on its model, as the input type of the validator that expands it, so the published
schema and the parser cannot drift apart and nothing here patches the generated schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel

REF = "#/components/schemas/"
JOB_DOCUMENT = "JobDocument"


def document_schemas(documents: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """OpenAPI components: each document by kind (``{"inference": InferenceDocument, ...}``), every
    section they use, and ``JobDocument``, any one of the documents.

    The result does not depend on the order the documents are given in. Two documents that use a
    section of one name defined differently are a ValueError: one name in the components stands
    for one shape.
    """
    components: dict[str, Any] = {}
    defined_by: dict[str, str] = {}
    for kind in sorted(documents):
        model = _document_of_kind(documents[kind], kind)
        schema = model.model_json_schema(ref_template=REF + "{model}", mode="validation")
        for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
            if name == JOB_DOCUMENT or components.get(name, definition) != definition:
                earlier = defined_by.get(name, "job")
                raise ValueError(f"the {earlier} and {kind} documents define {name!r} differently")
            components[name] = definition
            defined_by.setdefault(name, kind)
    components[JOB_DOCUMENT] = {
        "title": JOB_DOCUMENT,
        "description": _job_document_description(documents),
        "anyOf": [{"$ref": REF + documents[kind].__name__} for kind in sorted(documents)],
    }
    return dict(sorted(components.items()))


def _document_of_kind(model: type[BaseModel], kind: str) -> type[BaseModel]:
    field = model.model_fields.get("kind")
    if field is None or kind not in get_args(field.annotation):
        raise ValueError(f"{model.__name__} is given as the {kind!r} document but its kind is not {kind!r}")
    return model


def _job_document_description(documents: Mapping[str, type[BaseModel]]) -> str:
    kinds = [
        f"{kind} (the default when `kind` is left out)"
        if not documents[kind].model_fields["kind"].is_required()
        else kind
        for kind in sorted(documents)
    ]
    return f"A job document, chosen by its `kind`: {', '.join(kinds)}."
