"""What the control plane keeps: jobs (:mod:`service.store.jobs`) and registered models
(:mod:`service.store.models`), each a small protocol with a durable implementation
(:mod:`service.store.sqlite`, :mod:`service.store.model_file`) and an in-memory one
(:mod:`service.store.memory`) that pass one conformance test."""
