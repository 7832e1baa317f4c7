"""The API's own pages, /docs (Swagger UI) and /redoc, work on a cluster without internet access:
everything they load is served by the app itself. The OpenAPI text they show speaks to users."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings

BASE = "http://127.0.0.1:8000"


class Assets(HTMLParser):
    """Every URL the page makes a browser fetch: scripts, stylesheets and icons, the spec."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("docs")
    # No lifespan (no `with`): the pages need neither the store nor Dask.
    return TestClient(create_app(Settings(data_roots=[root], state_dir=root / ".pytc")), base_url=BASE)


def page_urls(html: str) -> list[str]:
    parser = Assets()
    parser.feed(html)
    # Swagger UI names the spec in its inline script: `url: '/openapi.json'`.
    return parser.urls + re.findall(r"\burl: '([^']+)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_nothing_from_another_host(client: TestClient, page: str) -> None:
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", answer.text), "a CDN or other host in the page"
    urls = page_urls(answer.text)
    assert any(url.endswith(".js") for url in urls) and "/openapi.json" in urls, urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, (url, asset.status_code)


def test_the_scripts_are_the_real_bundles(client: TestClient) -> None:
    swagger, redoc = (page_urls(client.get(page).text) for page in ("/docs", "/redoc"))
    (swagger_js,) = [url for url in swagger if url.endswith(".js")]
    (redoc_js,) = [url for url in redoc if url.endswith(".js")]
    assert "SwaggerUIBundle" in client.get(swagger_js).text
    assert "Redoc" in client.get(redoc_js).text


def test_the_openapi_text_speaks_to_users(client: TestClient) -> None:
    text = json.dumps(client.get("/openapi.json").json())
    for internal in ("CONTRACT.md", "shared/", ":class:", ":func:", ":meth:", "``", "docs/design"):
        assert internal not in text, internal
    assert not re.search(r"\b(service|workers|models|volumes)\.[a-z_]+\.", text), "a module path"
    assert not re.search(r"[A-Za-z_/]+\.py\b", text), "a source file"


def test_the_pages_are_not_in_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths)
    assert not any(path.startswith("/static") for path in paths)
