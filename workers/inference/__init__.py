"""The inference engine: a job's geometry, the two passes of a block, the run object that schedules
them, the Dask tasks, and the forward passes (see docs/design.md)."""
