"""What a worker process is: ``pytc-worker``, the per-worker state plugin, core pinning, the
allocator and the Dask settings every worker we start runs with."""
