"""A real S3 server for tests: moto's, on a free 127.0.0.1 port, stopped by the test that started it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.net_helpers import free_port
from volumes.urls import filesystem


@contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """The AWS variables of a moto S3 server with an empty bucket ``bucket``, set in this process
    while the context lasts. moto keeps its buckets in the process, not in the server: each module
    names a bucket of its own, or finds another module's still there."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            filesystem().mkdir(bucket)
            yield env
    finally:
        server.stop()
