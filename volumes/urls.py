"""Volumes in S3-compatible object stores, named ``s3://bucket/key``.

A URL is normalised once (:func:`normalise_url`: no empty, ``.`` or ``..`` segments, no trailing
slash), so that "inside a root" is a plain prefix test on whole segments (:func:`url_under`), as a
local path's is after symlinks are resolved; an object store has no symlinks to swap in later.

Credentials and the endpoint come from the standard AWS sources, never from a job: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``), the
files ``~/.aws/credentials`` and ``~/.aws/config``, and ``AWS_ENDPOINT_URL`` for a lab store such as
MinIO or Ceph. zarr v2/v3 stores are read and written through zarr's ``FsspecStore`` over s3fs
(botocore's credential chain); N5 through tensorstore's ``s3`` kvstore.
"""

from __future__ import annotations

import json
import os
from typing import Any

from volumes.errors import VolumeFormatError

SCHEME = "s3://"


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an object in a store (``s3://...``) rather than a local file."""
    return isinstance(path, str) and path.startswith(SCHEME)


def normalise_url(raw: str) -> str:
    """``s3://bucket/key`` with the key's empty and ``.`` segments dropped; ValueError for ``..``, a
    missing bucket or another scheme."""
    if not raw.startswith(SCHEME):
        raise ValueError(f"{raw!r} is not an s3:// URL")
    bucket, _, key = raw[len(SCHEME) :].partition("/")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not bucket or bucket in (".", "..") or "\\" in raw:
        raise ValueError(f"{raw!r} names no bucket")
    if ".." in parts:
        raise ValueError(f"{raw!r} may not contain '..'")
    return SCHEME + "/".join([bucket, *parts])


def url_under(url: str, root: str) -> bool:
    """Whether the normalised ``url`` is ``root`` or below it (whole segments: ``s3://b/data2`` is
    not under ``s3://b/data``)."""
    return url == root or url.startswith(root + "/")


def join_url(url: str, name: str | None) -> str:
    """``url`` with the ``/``-separated ``name`` below it, normalised."""
    return normalise_url(f"{url}/{name}") if name else url


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of a normalised URL; the key has no leading slash."""
    bucket, _, key = url[len(SCHEME) :].partition("/")
    return bucket, key


# The environment a file system was made under: a new one when any of these (or the process) change.
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
)  # fmt: skip
_filesystems: dict[tuple[Any, ...], Any] = {}


def filesystem() -> Any:
    """An s3fs file system with the standard AWS credentials and ``AWS_ENDPOINT_URL``: one per
    process and environment (making one costs a botocore session, about a second), so that the
    credentials and endpoint are always those the environment says now."""
    import s3fs  # only for object stores

    key = (os.getpid(), *(os.environ.get(name) for name in _AWS_VARIABLES))
    found = _filesystems.get(key)
    if found is None:
        _filesystems.clear()
        s3fs.S3FileSystem.clear_instance_cache()
        found = _filesystems[key] = s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False, **_endpoint()
        )  # listings: other processes write too
    return found


def zarr_store(url: str, *, read_only: bool) -> Any:
    """zarr's FsspecStore at ``url``."""
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, read_only=read_only, storage_options=_endpoint())


def _endpoint() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def tensorstore_kvstore(url: str) -> dict[str, Any]:
    """tensorstore's ``s3`` kvstore spec for the folder at ``url``."""
    bucket, key = split_url(url)
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": f"{key}/" if key else ""}
    endpoint = _endpoint().get("endpoint_url")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        spec["endpoint"] = endpoint
    if region:
        spec["aws_region"] = region
    return spec


def read_json_url(url: str) -> dict[str, Any] | None:
    """The JSON object stored at ``url``; None when there is none."""
    fs = filesystem()
    try:
        raw = fs.cat_file(url[len(SCHEME) :])
    except FileNotFoundError:
        return None
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise VolumeFormatError(f"{url} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise VolumeFormatError(f"{url} holds a JSON {type(value).__name__}, expected an object")
    return value


def write_json_url(url: str, value: dict[str, Any]) -> None:
    """Store the JSON object ``value`` at ``url`` (one PUT: readers see the old object or the new)."""
    filesystem().pipe_file(url[len(SCHEME) :], json.dumps(value, indent=2).encode())


def url_exists(url: str) -> bool:
    """Whether any object is stored at or below ``url``."""
    fs = filesystem()
    path = url[len(SCHEME) :]
    return bool(fs.exists(path)) or bool(fs.ls(path, detail=False) if fs.isdir(path) else [])
