"""Which precisions a device runs natively, decided where it is, and the checks that refuse the rest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from models.ref import ModelInfo
from service.documents.training import parse_training
from tests.helpers import make_job
from tests.training_helpers import training_doc, write_data
from workers.errors import Refusal, SpecError
from workers.inference import checks as inference_checks
from workers.inference.job import ComputeSpec, WindowSpec
from workers.runtime import precision
from workers.training import checks as training_checks
from workers.training.tasks import inspect_training


def _cpuinfo_flags() -> set[str]:
    """This CPU's flags as the kernel lists them: a source independent of torch's cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    pytest.fail("/proc/cpuinfo lists no CPU flags")


def test_the_decision_on_this_cpu_is_what_the_cpu_reports() -> None:
    flags = _cpuinfo_flags()
    where, refused = precision.unsupported_precisions("cpu")
    reasons = dict(refused)
    assert where.startswith("the CPU of this machine")
    assert ("bfloat16" in reasons) == (not flags & {"avx512_bf16", "amx_bf16", "bf16", "svebf16"})
    assert ("float16" in reasons) == (not flags & {"avx512_fp16", "amx_fp16", "asimdhp", "fphp"})
    assert "float32" not in reasons
    for name, reason in reasons.items():
        assert reason.startswith(f"{where} has no native {name}") and reason.endswith("use float32")


def test_without_torchs_capabilities_the_kernels_flags_decide_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = precision.unsupported_precisions("cpu")[1]
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    assert {name for name, _ in precision.unsupported_precisions("cpu")[1]} == {name for name, _ in expected}


@pytest.mark.parametrize(
    ("features", "refused"),
    [
        ({"avx512_f": True, "cpu_name": "Old Xeon"}, {"bfloat16", "float16"}),
        ({"avx512_bf16": True}, {"float16"}),
        ({"amx_bf16": True, "amx_fp16": True}, set()),
        ({"avx512_bf16": True, "avx512_fp16": True}, set()),
        ({"bf16": True, "fp16_arith": True, "architecture": "arm64"}, set()),
    ],
)
def test_cpu_rule(monkeypatch: pytest.MonkeyPatch, features: dict[str, Any], refused: set[str]) -> None:
    monkeypatch.setattr(precision, "cpu_features", lambda: features)
    where, reasons = precision.unsupported_precisions("cpu")
    assert {name for name, _ in reasons} == refused
    if "cpu_name" in features:
        assert where.endswith("(Old Xeon)")
    if "bfloat16" in refused:
        assert "(no AVX512-BF16 or AMX)" in dict(reasons)["bfloat16"]


def test_inside_a_dask_worker_the_worker_is_named() -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        where = client.submit(precision.unsupported_precisions, "cpu", pure=False).result()[0]
        name = next(iter(client.scheduler_info()["workers"].values()))["name"]
    assert where.startswith(f"the CPU of worker {name}")


def test_the_inference_check_refuses_what_the_worker_reported() -> None:
    window = WindowSpec((5, 5, 5), (4, 4, 4), "gaussian")
    job = replace(
        make_job(Path("in.zarr"), Path("out.zarr"), window), compute=ComputeSpec(precision="bfloat16")
    )
    reason = "the CPU of worker w (X) has no native bfloat16 (no AVX512-BF16 or AMX): ...; use float32"
    inference_checks.check_precision(job, ModelInfo(1, 1, "sha", unsupported_precisions=()))
    with pytest.raises(SpecError) as info:
        inference_checks.check_precision(
            job, ModelInfo(1, 1, "sha", unsupported_precisions=(("bfloat16", reason),))
        )
    assert info.value.field == "compute.precision" and info.value.reason == reason


def test_training_preflight_refuses_a_precision_this_cpu_lacks(tmp_path: Path) -> None:
    write_data(tmp_path)
    reasons = dict(precision.unsupported_precisions("cpu")[1])
    for name in ("float32", "bfloat16", "float16"):
        job = parse_training(training_doc(**{"compute.precision": name, "compute.device": "cpu"}), [tmp_path])
        answer = inspect_training(job)
        if name in reasons:
            assert answer == Refusal((("compute.precision", reasons[name]),)), name
        else:
            assert not isinstance(answer, Refusal), (name, answer)
    with pytest.raises(SpecError, match=r"compute\.precision"):
        training_checks.check_precision(job, {"float16": "no"})


@pytest.mark.parametrize(
    ("capability", "refused"), [((7, 0), {"bfloat16"}), ((8, 0), set()), ((9, 0), set())]
)
def test_gpu_rule(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], refused: set[str]) -> None:
    """No GPU here: the CUDA queries are stood in for (the rule is compute capability 8.0)."""
    monkeypatch.setattr(precision, "pick_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Tesla V100-SXM2-32GB")
    where, reasons = precision.unsupported_precisions("cuda")
    assert where.startswith("the GPU 0 of this machine (Tesla V100-SXM2-32GB, compute capability")
    assert {name for name, _ in reasons} == refused
    if refused:
        assert "needs compute capability 8.0" in dict(reasons)["bfloat16"]


def test_the_documents_field_says_when_a_precision_is_refused() -> None:
    """The job reference users read (/docs, the OpenAPI schema) explains the rule."""
    from service.documents.inference import InferenceDocument
    from service.documents.training import TrainingDocument

    for document, section in (
        (InferenceDocument, "ComputeSection"),
        (TrainingDocument, "TrainingComputeSection"),
    ):
        field = document.model_json_schema()["$defs"][section]["properties"]["precision"]
        assert "natively" in field["description"] and "AVX512-BF16" in field["description"], document


def test_a_gpu_job_checked_where_there_is_none_is_not_decided_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """``device: cuda`` checked by a worker without CUDA (a mixed cluster, or this machine): no
    refusal and no error; the blocks ask for an accelerator, the check does not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.unsupported_precisions("cuda") == ("no GPU on this machine", ())
