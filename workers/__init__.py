"""What runs on a Dask worker, and the protocols the control plane drives it by.

- :mod:`workers.inference`: the inference engine (the two-pass block protocol, its run object, the
  block tasks, the model cache, test-time augmentation).
- :mod:`workers.training`: the training engine (the training task, its checkpoint folder, data,
  validation).
- :mod:`workers.runtime`: what a worker process is (``pytc-worker``, the per-worker state plugin,
  cores, allocator, Dask settings).
"""
