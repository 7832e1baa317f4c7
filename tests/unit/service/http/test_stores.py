"""Signed store links (service.http.stores, service.http.signing): a link grants its store only,
read-only, for its lifetime; everything else is refused. A real ASGI app (the store routes alone,
no Dask) over real files in tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.http.signing import SESSION_SCOPE, STORE_SCOPE, BadSignature, Signer, load_secret
from service.http.stores import clean_relative, store_routes
from service.settings import Settings

SECRET = b"0123456789abcdef0123456789abcdef"
VIEWER = "http://viewer.lab.example:9000"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> dict:
    root = tmp_path / "root"
    store = root / "pred.zarr"
    (store / "pred" / "c" / "0").mkdir(parents=True)
    (store / "zarr.json").write_text('{"node_type": "group", "zarr_format": 3}')
    (store / "pred" / "c" / "0" / "0").write_bytes(bytes(range(256)) * 4)
    (root / "other.zarr").mkdir()
    (root / "other.zarr" / "zarr.json").write_text('{"secret": true}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    clock = Clock()
    signer = Signer(SECRET, clock)
    app = FastAPI()
    app.state.signer = signer
    app.include_router(store_routes(Settings(data_roots=[root], neuroglancer_url=f"{VIEWER}/ng/")))
    return {"root": root, "store": store, "outside": outside, "clock": clock, "signer": signer,
            "client": TestClient(app)}  # fmt: skip


def link(world: dict, store: Path | None = None, scope: str = STORE_SCOPE, ttl: float = 60) -> str:
    token, _ = world["signer"].sign(str(store or world["store"]), scope, ttl)
    return f"/stores/{token}/"


def test_a_signed_link_reads_its_store_with_ranges_and_head(world: dict) -> None:
    client, base = world["client"], link(world)
    assert client.get(base + "zarr.json").json()["node_type"] == "group"
    whole = client.get(base + "pred/c/0/0")
    assert whole.status_code == 200 and whole.content == bytes(range(256)) * 4
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(base + "pred/c/0/0", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == bytes(range(10, 20))
    assert part.headers["content-range"] == "bytes 10-19/1024"
    tail = client.get(base + "pred/c/0/0", headers={"Range": "bytes=-4"})
    assert tail.status_code == 206 and tail.content == bytes(range(252, 256))
    assert client.get(base + "pred/c/0/0", headers={"Range": "bytes=5000-6000"}).status_code == 416
    head = client.head(base + "pred/c/0/0")
    assert head.status_code == 200 and head.headers["content-length"] == "1024" and not head.content


def test_it_is_read_only(world: dict) -> None:
    client, base = world["client"], link(world)
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        assert client.request(method, base + "zarr.json", content=b"{}").status_code == 405
    assert (world["store"] / "zarr.json").read_text().startswith('{"node_type"')


def test_no_listing_and_missing_chunks_are_404(world: dict) -> None:
    client, base = world["client"], link(world)
    for rel in ("pred", "pred/", "pred/c/0", ""):
        response = client.get(base + rel)
        assert response.status_code == 404, rel
        assert "zarr.json" not in response.text and "c/0" not in response.text
    assert client.get(base + "pred/c/0/9").status_code == 404


@pytest.mark.parametrize(
    "rel",
    ["..%2Fother.zarr%2Fzarr.json", "pred/..%2F..%2Fother.zarr/zarr.json", "%2E%2E/other.zarr/zarr.json",
     "%2Fetc%2Fpasswd", "pred/%2E/c/0/0", "pred//c/0/0", "pred%5C..%5Czarr.json", "pred%00"],
)  # fmt: skip
def test_paths_out_of_the_store_are_refused(world: dict, rel: str) -> None:
    response = world["client"].get(link(world) + rel)
    assert response.status_code == 404, (rel, response.text)
    assert "secret" not in response.text and "root:x" not in response.text


def test_clean_relative_takes_plain_names_only() -> None:
    assert clean_relative("a/b/c.json") == "a/b/c.json"
    for bad in ("", "/a", "a/../b", "..", "a/./b", "a//b", "a\\b", "a\x00", "a/"):
        assert clean_relative(bad) is None, bad


def test_a_symlink_out_of_the_store_is_refused_and_one_inside_is_followed(world: dict) -> None:
    store = world["store"]
    os.symlink(world["outside"] / "passwd", store / "escape")
    os.symlink(world["outside"], store / "escape_dir")
    os.symlink(world["root"] / "other.zarr" / "zarr.json", store / "sibling")
    os.symlink(store / "pred" / "c" / "0" / "0", store / "alias")
    client, base = world["client"], link(world)
    for rel in ("escape", "escape_dir/passwd", "sibling"):
        response = client.get(base + rel)
        assert response.status_code == 404 and "root:x" not in response.text and "secret" not in response.text
    assert client.get(base + "alias").content == bytes(range(256)) * 4


def test_expired_altered_or_foreign_tokens_are_refused(world: dict) -> None:
    client, signer = world["client"], world["signer"]
    base = link(world, ttl=30)
    assert client.get(base + "zarr.json").status_code == 200
    world["clock"].now += 31
    expired = client.get(base + "zarr.json")
    assert expired.status_code == 403 and "expired" in expired.text
    world["clock"].now -= 31
    token = base.split("/")[2]
    payload, mac = token.split(".")
    other, _ = signer.sign(str(world["root"] / "other.zarr"), STORE_SCOPE, 60)
    forged = [
        f"{other.split('.')[0]}.{mac}",  # another store's payload under this signature
        f"{payload}.{mac[:-2]}AA",  # the signature altered
        f"{payload}.",
        "nonsense",
        Signer(b"another-secret-of-32-bytes-long!").sign(str(world["store"]), STORE_SCOPE, 60)[0],
        signer.sign(str(world["store"]), SESSION_SCOPE, 60)[0],  # a page session is no store link
    ]
    for bad in forged:
        assert client.get(f"/stores/{bad}/zarr.json").status_code == 403, bad


def test_a_signed_store_outside_the_data_roots_is_refused(world: dict) -> None:
    response = world["client"].get(link(world, world["outside"]) + "passwd")
    assert response.status_code == 404 and "root:x" not in response.text


def test_cors_for_the_viewers_origin_only(world: dict) -> None:
    client, base = world["client"], link(world)
    allowed = client.get(base + "zarr.json", headers={"Origin": VIEWER})
    assert allowed.headers["access-control-allow-origin"] == VIEWER
    assert "Content-Range" in allowed.headers["access-control-expose-headers"]
    other = client.get(base + "zarr.json", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options(
        base + "pred/c/0/0",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-headers"] == "Range"


def test_signer_round_trip_and_scope() -> None:
    signer = Signer(SECRET)
    token, expires = signer.sign("/data/a.zarr", STORE_SCOPE, 100)
    grant = signer.verify(token, STORE_SCOPE)
    assert grant.subject == "/data/a.zarr" and grant.expires == expires
    with pytest.raises(BadSignature):
        signer.verify(token, SESSION_SCOPE)
    with pytest.raises(ValueError, match="16 bytes"):
        Signer(b"short")


def test_the_secret_comes_from_the_setting_else_a_private_file_kept_across_restarts(tmp_path: Path) -> None:
    assert load_secret(tmp_path / "a", "a-lab-secret-of-enough-bytes") == b"a-lab-secret-of-enough-bytes"
    with pytest.raises(ValueError, match="PYTC_VIEW_SECRET"):
        load_secret(tmp_path / "a", "short")
    first = load_secret(tmp_path / "state")
    assert len(first) >= 32 and load_secret(tmp_path / "state") == first
    mode = stat.S_IMODE((tmp_path / "state" / "view.secret").stat().st_mode)
    assert mode == 0o600


def test_viewing_settings_are_checked_when_the_service_starts() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Settings(view_secret="short")
    with pytest.raises(ValueError, match="http"):
        Settings(neuroglancer_url="file:///ng")
    assert Settings(neuroglancer_url="", view_secret=" ").neuroglancer_url is None
