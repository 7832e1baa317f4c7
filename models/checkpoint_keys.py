"""The keys of a checkpoint dict, in one place (torch-free: the control plane reads them too).

PyTorch Connectomics writes ``state_dict``, ``optimizer``, ``lr_scheduler`` and ``iteration``
(iterations completed); we read those from its checkpoints and write them in ours, and add the
rest, so that a resume is exact and a checkpoint says what made it.
"""

from __future__ import annotations

# PyTC's keys
STATE_DICT = "state_dict"
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
ITERATION = "iteration"

# ours: the format, and the state an exact resume needs
SCHEMA_VERSION = "schema_version"
GRAD_SCALER = "grad_scaler"
RNG = "rng"  # torch (CPU and CUDA), numpy and Python generators
SAMPLER = "sampler"  # where the training data stream stands

# ours: what made the checkpoint
JOB_KEY = "job_key"  # the training job's key: a run resumes only from its own checkpoints
JOB = "job"  # the job document
ARCHITECTURE = "architecture"
CONFIG = "config"
HEADS = "heads"
METRICS = "metrics"  # loss, validation scores (the demo model adds its Dice)
TRAINING = "training"  # how it was trained: normalisation, patch, torch version, command
