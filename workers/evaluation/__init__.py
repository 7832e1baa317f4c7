"""Scoring a segmentation against its ground truth on Dask: a few blocks per task, each task
returning the small contingency table of its blocks (:mod:`volumes.metrics`), merged by the driver.
job.py (the frozen job), tasks.py (what runs on a worker), run.py (the driver: in flight, cancel,
progress; or serially in one process)."""
