"""The service's settings from ``PYTC_*`` variables: lists split as the contract says, and a token
list that names no token refused (it would leave the API open while it looks guarded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYTC_API_TOKENS", "PYTC_ADMIN_TOKENS", "PYTC_DATA_ROOTS", "PYTC_JOB_KINDS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("value", "tokens"), [("a,b", ["a", "b"]), (" a , ", ["a"]), ("", [])])
def test_tokens_are_comma_separated(monkeypatch: pytest.MonkeyPatch, value: str, tokens: list[str]) -> None:
    monkeypatch.setenv("PYTC_API_TOKENS", value)
    assert Settings().api_tokens == tokens


@pytest.mark.parametrize("variable", ["PYTC_API_TOKENS", "PYTC_ADMIN_TOKENS"])
@pytest.mark.parametrize("value", [",", " , ", ",,,"])
def test_a_token_list_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match="holds no token"):
        Settings()


def test_admin_tokens_alone_turn_authentication_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().auth_enabled
    monkeypatch.setenv("PYTC_ADMIN_TOKENS", "root-1, root-2")
    settings = Settings()
    assert settings.admin_tokens == ["root-1", "root-2"] and settings.api_tokens == []
    assert settings.auth_enabled


def test_roots_and_kinds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTC_DATA_ROOTS", "/a::/b")
    monkeypatch.setenv("PYTC_JOB_KINDS", "lab.kinds:SEG, lab.kinds:QC")
    settings = Settings()
    assert settings.data_roots == [Path("/a"), Path("/b")]
    assert settings.job_kinds == ["lab.kinds:SEG", "lab.kinds:QC"]


def test_a_max_model_size_that_is_not_a_size_stops_the_service_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTC_MAX_MODEL_BYTES", "512MiB")
    assert Settings().max_model_bytes == "512MiB"
    monkeypatch.setenv("PYTC_MAX_MODEL_BYTES", "lots")
    with pytest.raises(ValidationError, match="PYTC_MAX_MODEL_BYTES='lots' is not a size"):
        Settings()
