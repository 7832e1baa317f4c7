"""Job documents, the outer surface users write: YAML for ``pytc run``, JSON for ``POST /v1/jobs``.

``sections``: what every document is built from (the frozen section base, field types, validation
naming dotted fields, data-root confinement). ``loading``: job files and canonical JSON.
``inference`` and ``training``: one document each, parsed into the engine's frozen job.
``schema``: the published JSON Schema, generated from the same models that parse.
"""
