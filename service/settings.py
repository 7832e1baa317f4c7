"""Settings of the REST service (``pytc-serve``), read from ``PYTC_*`` variables.

One :class:`Settings` per process, built by whoever starts the service and handed to
``create_app(settings)``; nothing reads the environment at import time. Lists in the environment are
separated as the contract says: ``PYTC_DATA_ROOTS`` by ``:``, ``PYTC_API_TOKENS`` by ``,``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.torch_files import MAX_MODEL_BYTES_VARIABLE, max_model_bytes
from workers import limits as bounds


def _split(value: Any, separator: str) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    return value


class LimitSettings(BaseSettings):
    """The admission bounds (:mod:`workers.limits`), read by ``pytc-serve`` and ``pytc run`` alike:
    what a job may ask of a worker, checked before anything is allocated."""

    model_config = SettingsConfigDict(env_prefix="PYTC_", extra="ignore", frozen=True)

    # The memory of the smallest worker; one block task (or training batch) may take half of it.
    worker_memory_bytes: Annotated[int, Field(gt=0)] = bounds.DEFAULT_WORKER_MEMORY_BYTES
    # The voxels an input's metadata may claim (its spatial shape times its channels).
    max_input_voxels: Annotated[int, Field(gt=0)] = bounds.DEFAULT_MAX_INPUT_VOXELS
    # Windows, output chunks or blocks along one axis of a job's region.
    max_axis_count: Annotated[int, Field(gt=0)] = bounds.DEFAULT_MAX_AXIS_COUNT
    # One output chunk, all channels, in float32.
    max_chunk_bytes: Annotated[int, Field(gt=0)] = bounds.DEFAULT_MAX_CHUNK_BYTES
    # Weights of a network built from ``model.architecture`` and ``model.config``.
    max_model_parameters: Annotated[int, Field(gt=0)] = bounds.DEFAULT_MAX_MODEL_PARAMETERS

    def limits(self) -> bounds.Limits:
        return bounds.Limits(
            worker_memory_bytes=self.worker_memory_bytes,
            max_input_voxels=self.max_input_voxels,
            max_axis_count=self.max_axis_count,
            max_chunk_bytes=self.max_chunk_bytes,
            max_model_parameters=self.max_model_parameters,
        )


class Settings(LimitSettings):
    """Everything ``pytc-serve`` can be told; defaults follow the contract."""

    model_config = SettingsConfigDict(env_prefix="PYTC_", extra="ignore", frozen=True)

    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path.cwd()], min_length=1)
    state_dir: Path = Path(".pytc")
    scheduler: str | None = None
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Tokens that see and act on every tenant's jobs (service.http.auth); also valid for /v1.
    admin_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 2
    # The embedded local cluster (PYTC_SCHEDULER unset): worker processes and threads per worker.
    local_workers: Annotated[int, Field(ge=1)] = 1
    local_threads_per_worker: Annotated[int, Field(ge=1)] = 1
    # Niceness of the embedded workers: the API stays responsive while they compute on its cores.
    local_worker_niceness: Annotated[int, Field(ge=0, le=19)] = 10
    # How long a submission may wait for a worker to load the model before answering 503.
    model_check_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # Model checks (probes) at once, and how long one may load and run its model on a worker.
    model_probes: Annotated[int, Field(ge=1)] = 1
    model_probe_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # The most a model file may declare (models.torch_files reads it where files are looked at);
    # here so that a value that is not a size stops the service at start, not each submission.
    max_model_bytes: str | None = None
    # How often a running job's progress is written to the store (and so seen by readers).
    progress_interval_s: Annotated[float, Field(gt=0)] = 0.5
    # Web pages of other origins allowed to call the API from a browser (CORS); none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A lab's own job kinds, ``module:attribute`` each (service.kinds), beside the built-in ones.
    job_kinds: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Viewing (service.http.stores, service.http.viewer): a lab's own neuroglancer instead of the one
    # the service serves; the secret signing store links and page sessions (else one kept in the
    # state folder); how long a link or a page session lasts.
    neuroglancer_url: str | None = None
    view_secret: str | None = None
    view_link_ttl_s: Annotated[float, Field(gt=0)] = 12 * 3600.0
    access_log: bool = False
    log_level: str = "info"

    @field_validator("data_roots", mode="before")
    @classmethod
    def _colon_separated(cls, value: Any) -> Any:
        return _split(value, ":")

    @field_validator("job_kinds", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("api_tokens", "admin_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        """``,``-separated tokens. A list that names no token (``","``, ``" , "``) is refused: it would
        leave the API open while whoever set it believes it is guarded. Empty means unset."""
        tokens = _split(value, ",")
        if isinstance(value, str) and value.strip() and not tokens:
            raise ValueError(f"{value!r} holds no token; leave it unset for no tokens of this kind")
        return tokens

    @field_validator("view_secret")
    @classmethod
    def _a_long_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.strip().encode()) < 16:
            raise ValueError("the view secret signs links and sessions: give it at least 16 bytes")
        return value

    @field_validator("neuroglancer_url")
    @classmethod
    def _a_web_page(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is no http(s) URL of a neuroglancer page")
        return value

    @field_validator("max_model_bytes")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        if value is not None:
            max_model_bytes({MAX_MODEL_BYTES_VARIABLE: value})  # ValueError naming the variable
        return value

    @property
    def auth_enabled(self) -> bool:
        """Whether /v1 needs a token: any token, of either kind, is configured."""
        return bool(self.api_tokens or self.admin_tokens)

    @field_validator("scheduler", "neuroglancer_url", "view_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"
