"""The Dask resource every model task asks for: one accelerator slot.

``pytc-worker`` advertises one ``GPU`` per visible GPU (or per CPU worker where there is none), and
the embedded clusters of ``pytc run`` and the service advertise the same, so model tasks run one at
a time per device. Checks that only load a model on the CPU ask for none (see the service's model
probes), so a task holding the slot for hours never keeps them waiting.
"""

from __future__ import annotations

ACCELERATOR = "GPU"
# ``resources=`` of a task that runs a model: one accelerator slot.
ONE_ACCELERATOR: dict[str, float] = {ACCELERATOR: 1}
