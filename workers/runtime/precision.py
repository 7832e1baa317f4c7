"""Which reduced precisions the device a job would use runs natively, found where that device is.

``compute.precision: bfloat16`` or ``float16`` is autocast: the convolutions run in that type and
everything is accumulated in float32. On a device without the instructions for it, the kernels
emulate the type, and the job runs several times slower than in float32 for no gain (measured on
the 2-core CI machine: float16 autocast on a CPU without AVX512-FP16, 8 times the float32 time of
the demo model's forward pass). Admission refuses such a job, naming the device, instead of
letting it crawl.

The rule, per device (``torch.cpu.get_capabilities`` is cpuinfo's view of the CPU):

- CPU, bfloat16: AVX512-BF16 or AMX-BF16 (x86), BF16 (Arm);
- CPU, float16: AVX512-FP16 or AMX-FP16 (x86), FP16 arithmetic (Arm);
- CUDA, bfloat16: compute capability 8.0 or newer (Ampere); float16: every GPU torch supports.

This module imports torch: workers import it inside their checks, the control plane never.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.devices import pick_device

# Per precision, the CPU features any one of which makes it native (torch's / cpuinfo's names).
_CPU_NATIVE = {
    "bfloat16": (("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"), "AVX512-BF16 or AMX"),
    "float16": (("avx512_fp16", "amx_fp16", "fp16_arith"), "AVX512-FP16 or AMX-FP16"),
}


def unsupported_precisions(requested_device: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The device ``requested_device`` (a job's ``compute.device``) resolves to here, in words, and
    for each precision it does not run natively, why and what to use instead."""
    device = pick_device(requested_device)
    where = _where()
    if device.type == "cuda" and not torch.cuda.is_available():
        # ``device: cuda`` checked on a worker without a GPU: the job's blocks may run on another
        # (they ask for the accelerator slot, the check does not), so nothing is decided here.
        return f"no GPU on {where}", ()
    if device.type == "cuda":
        return _cuda(where)
    features = cpu_features()
    name = str(features.get("cpu_name") or "").strip()
    label = f"the CPU of {where}" + (f" ({name})" if name else "")
    refusals = []
    for precision, (native, wanted) in _CPU_NATIVE.items():
        if not any(features.get(feature) for feature in native):
            refusals.append(
                (
                    precision,
                    f"{label} has no native {precision} (no {wanted}): autocast would emulate it, "
                    f"several times slower than float32; use float32",
                )
            )
    return label, tuple(refusals)


def cpu_features() -> Mapping[str, Any]:
    """This CPU's features: ``torch.cpu.get_capabilities()``, or the flags of ``/proc/cpuinfo``
    where torch is older than that function."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(dict.fromkeys(value.split(), True))
        elif key.strip() == "model name":
            flags.setdefault("cpu_name", value.strip())
    if flags.get("asimdhp"):  # Arm's name for FP16 arithmetic
        flags["fp16_arith"] = True
    return flags


def _cuda(where: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    label = f"the GPU {index} of {where} ({name}, compute capability {major}.{minor})"
    if major >= 8:
        return label, ()
    reason = (
        f"{label} has no native bfloat16 (it needs compute capability 8.0, Ampere or newer): "
        "use float16 or float32"
    )
    return label, (("bfloat16", reason),)


def _where() -> str:
    """``worker NAME`` inside a Dask worker, else ``this machine``."""
    from distributed import get_worker

    try:
        return f"worker {get_worker().name}"
    except ValueError:  # not inside a Dask worker: pytc run checks in its own process
        return "this machine"
