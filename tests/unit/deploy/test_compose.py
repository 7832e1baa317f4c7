"""The deployment files, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())


def test_the_three_services_exist(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"scheduler", "service", "worker"}
    assert compose["services"]["worker"]["command"][:3] == [
        "pytc-worker",
        "--scheduler",
        "tcp://scheduler:8786",
    ]
    assert compose["services"]["service"]["command"] == ["pytc-serve"]
    assert compose["services"]["scheduler"]["command"][:2] == ["dask", "scheduler"]


def test_workers_reserve_nvidia_gpus(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_dask_ports_are_never_published(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert not re.search(r"87(86|87)", str(port)), f"{name} publishes a Dask port: {port}"
    assert "ports" not in compose["services"]["scheduler"]
    assert compose["networks"]["cluster"]["internal"] is True
    assert compose["services"]["scheduler"]["networks"] == ["cluster"]
    assert compose["services"]["worker"]["networks"] == ["cluster"]


def test_the_api_is_the_only_published_port(compose: dict[str, Any]) -> None:
    ports = compose["services"]["service"]["ports"]
    assert len(ports) == 1 and str(ports[0]).endswith(":8000")


def test_data_is_mounted_at_the_same_path_where_it_is_used(compose: dict[str, Any]) -> None:
    for name in ("service", "worker"):
        assert compose["services"][name]["volumes"] == ["pytc-data:/data"], name
    env = compose["services"]["service"]["environment"]
    assert env["PYTC_DATA_ROOTS"] == "/data" and env["PYTC_SCHEDULER"] == "tcp://scheduler:8786"
    assert env["PYTC_STATE_DIR"].startswith("/data/")


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name


def test_dockerfile_defaults_to_cpu_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^USER pytc$", text, re.M)
    assert '"torch>=2.10,<=2.14.1"' in text
    assert re.search(r'^CMD \["pytc-serve"\]$', text, re.M)
