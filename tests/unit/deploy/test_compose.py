"""The deployment files, checked without a Docker engine: structure, exposure, and agreement with
the code they start (console scripts, worker flags). The lock the image installs with:
``test_constraints.py``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.runtime.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
DASK_PORTS = re.compile(r"\b87(86|87)\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_the_three_services_run_the_projects_commands(services: dict[str, Any]) -> None:
    assert set(services) == {"scheduler", "service", "worker"}
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert services["service"]["command"] == ["pytc-serve"]
    worker = services["worker"]["command"]
    assert worker[:3] == ["pytc-worker", "--scheduler", "tcp://scheduler:8786"]
    build_parser().parse_args(worker[1:])  # every flag the compose file passes exists
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"pytc-serve", "pytc-worker"} <= set(scripts)


def test_workers_reserve_all_nvidia_gpus(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == "all"
    assert "gpu" in devices[0]["capabilities"]


def test_dask_ports_are_never_published(compose: dict[str, Any], services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert not DASK_PORTS.search(str(port)), f"{name} publishes a Dask port: {port}"
    assert "ports" not in services["scheduler"] and "ports" not in services["worker"]
    assert compose["networks"]["cluster"]["internal"] is True
    assert services["scheduler"]["networks"] == ["cluster"]
    assert services["worker"]["networks"] == ["cluster"]


def test_the_api_is_the_only_published_port_on_its_own_network(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    ports = services["service"]["ports"]
    assert len(ports) == 1 and str(ports[0]).endswith(":8000")
    assert set(services["service"]["networks"]) == {"cluster", "api"}
    assert not compose["networks"]["api"].get("internal", False)


def test_data_is_mounted_at_the_same_path_everywhere(services: dict[str, Any]) -> None:
    mounts = {name: service["volumes"] for name, service in services.items()}
    assert all(m == mounts["service"] for m in mounts.values()), mounts
    (mount,) = mounts["service"]
    assert mount.split(":")[1] == "/data"


def test_the_service_is_configured_for_the_cluster(services: dict[str, Any]) -> None:
    env = services["service"]["environment"]
    assert env["PYTC_SCHEDULER"] == "tcp://scheduler:8786"
    assert env["PYTC_DATA_ROOTS"] == "/data"
    assert env["PYTC_STATE_DIR"] == "/data/.pytc"
    assert env["PYTC_HOST"] == "0.0.0.0"
    assert "PYTC_API_TOKENS" in env and "${PYTC_API_TOKENS" in env["PYTC_API_TOKENS"]


def test_every_service_has_a_healthcheck_that_checks_it(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert any("/livez" in part for part in services["service"]["healthcheck"]["test"])
    assert any("8786" in part for part in services["scheduler"]["healthcheck"]["test"])
    command, check = services["worker"]["command"], services["worker"]["healthcheck"]["test"]
    health_file = command[command.index("--health-file") + 1]
    assert check[1:] == ["pytc-worker", "--check-health", health_file]


def test_the_worker_gets_time_to_drain(services: dict[str, Any]) -> None:
    drain = build_parser().parse_args(services["worker"]["command"][1:]).drain_timeout
    assert _seconds(services["worker"]["stop_grace_period"]) > drain + 10
    assert services["worker"].get("init") is True  # signals reach pytc-worker, children are reaped


def test_dockerfile_defaults_to_cpu_and_takes_a_cuda_base(dockerfile: str) -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", dockerfile, re.M)
    assert re.search(r"--index-url \$\{TORCH_INDEX\}", dockerfile)


def test_dockerfile_runs_unprivileged_and_serves_the_api(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    last_run = max(m.start() for m in re.finditer(r"^RUN ", dockerfile, re.M))
    assert dockerfile.rindex("\nUSER ") > last_run, "the final user must be set after the last RUN"
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    assert re.search(r'^CMD \["pytc-serve"\]$', dockerfile, re.M)
