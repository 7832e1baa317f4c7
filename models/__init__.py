"""Networks, the architecture registry, the checkpoint format and model loading (torch, no IO
beyond reading model and checkpoint files). Import the submodules directly."""
