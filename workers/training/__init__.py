"""The training engine: one Dask task trains a whole job, resuming from its own checkpoints; the
control plane follows it through the records in the checkpoint folder (see docs/training.md)."""
