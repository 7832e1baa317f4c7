"""What the commands say about themselves: ``--help`` that shows defaults, the job format and exit
codes; ``--version`` on ``pytc`` and ``pytc-serve``; ``pytc models`` with nothing registered."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.cli import build_parser, main
from service.documents.inference import parse_inference
from service.http import serve
from service.store.sqlite import SCHEMA_VERSION
from workers.version import package_version

ROOT = Path(__file__).resolve().parents[3]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_pytc_help_lists_the_commands_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    for command in ("run", "synth", "submit", "status", "wait", "cancel", "delete", "jobs", "models"):
        assert f"    {command} " in text
    assert "exit codes:" in text
    for code in ("0", "1", "2", "130"):
        assert f"\n  {code} " in text


def test_run_help_explains_the_job_format_resume_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "run")
    assert "kind: inference" in text and "kind: training" in text and "docs/training.md" in text
    assert "--scheduler" in text and "PYTC_SCHEDULER" in text
    assert "--data-root" in text and "PYTC_DATA_ROOTS" in text
    assert "resumes" in text and "output.overwrite: true" in text
    assert "130  interrupted" in text and "2    the job or the command line is invalid" in text


def test_the_example_in_run_help_is_a_valid_job(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = help_of(capsys, "run")
    example = text.split("a minimal inference job (job.yaml):\n", 1)[1].split("\n\n", 1)[0]
    job = parse_inference(yaml.safe_load(textwrap.dedent(example)), [tmp_path])
    assert job.output.path == str(tmp_path / "pred.zarr")
    assert job.window.stride == (8, 64, 64)  # overlap 0.5 of 17, 129, 129


def test_synth_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(capsys, "synth").split())  # argparse wraps to the terminal's width
    defaults = build_parser().parse_args(["synth", "out.zarr"])
    for flag, value in (("shape", defaults.shape), ("voxel_size", defaults.voxel_size)):
        assert f"(default: {' '.join(map(str, value))})" in text, flag
    assert f"(default: {' '.join(map(str, defaults.chunks))})" in text
    assert f"(default: {defaults.seed})" in text and f"(default: {defaults.format})" in text


def test_pytc_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pytc-service {package_version()}\n"
    assert package_version() not in ("", "0+unknown")  # the test environment installs the package


def test_pytc_serve_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "PYTC_DATA_ROOTS" in text and "PYTC_API_TOKENS" in text and "exit codes:" in text
    assert serve.main(["--version"]) == 0
    assert capsys.readouterr().out == f"pytc-service {package_version()}\n"


def test_pytc_serve_help_imports_neither_the_app_nor_uvicorn() -> None:
    """``--help`` answers before the app's seconds of imports; checked in a fresh interpreter."""
    heavy = ("uvicorn", "fastapi", "service.http.app", "service.settings", "distributed", "torch")
    code = (
        "import sys\n"
        "from service.http.serve import main\n"
        "assert main(['--help']) == 0\n"
        f"print('imported:', [m for m in {heavy!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "usage: pytc-serve" in done.stdout
    assert done.stdout.splitlines()[-1] == "imported: []"


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pytc-serve must stop before it starts the server")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.usefixtures("no_server")
def test_pytc_serve_names_a_wrong_setting_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYTC_PORT", "eighty")
    assert serve.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pytc-serve: error: PYTC_PORT: ") and "'eighty'" in err
    assert serve.main(["--port", "99999"]) == 2
    assert capsys.readouterr().err.startswith("pytc-serve: error: --port: ")
    monkeypatch.delenv("PYTC_PORT")
    monkeypatch.setenv("PYTC_LOG_LEVEL", "loud")
    assert serve.main([]) == 2
    assert "PYTC_LOG_LEVEL" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # nothing was made


@pytest.mark.usefixtures("no_server")
def test_pytc_serve_refuses_a_database_from_a_newer_version_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "jobs.sqlite3"
    with closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA user_version = 99")
    assert serve.main(["--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"pytc-serve: error: the job database {database} has schema version 99")
    assert f"knows versions up to {SCHEMA_VERSION}" in err
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99  # left as it was


def _client_with(models: list[dict[str, Any]]) -> Any:
    from service.client import PytcClient

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"models": models})

    return lambda args: PytcClient("http://pytc.test", transport=httpx.MockTransport(answer))


def test_models_with_none_registered_says_so_instead_of_a_bare_header(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.cli.client_commands._client", _client_with([]))
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    assert out == ""  # a script reading the table finds no rows, and no header either
    assert "no models registered yet" in err and "register_as" in err
    model = {"name": "mito-v1", "kind": "torchscript", "sha256": "ab" * 32, "path": "/m/net.pt"}
    monkeypatch.setattr("service.cli.client_commands._client", _client_with([model]))
    assert main(["models"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "KIND", "SHA256", "SOURCE"]
    assert row.split() == ["mito-v1", "torchscript", "ab" * 6, "/m/net.pt"]
