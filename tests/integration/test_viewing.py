"""Viewing jobs, end to end on a real ``pytc-serve`` with tokens: the view link and the signed store
links it holds, previews, ``pytc view``, the page's login session, and the page and neuroglancer in
headless Chromium (screenshots kept in the test's tmp folder, their paths printed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.integration.browser import chromium, screenshot, wait_until
from tests.integration.service_fixtures import Service, job_doc, make_data, running_service, wait_for_state
from tests.training_helpers import training_doc, write_data
from volumes.open import open_volume
from volumes.pyramid import level_shape, pyramid_factors

pytestmark = pytest.mark.slow  # a real service runs two small jobs (about 40 s), and Chromium

TOKEN = "view-test-token-0123456789"
OTHER = "another-tenants-token-0123"  # a second tenant
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = make_data(tmp_path_factory.mktemp("viewing") / "root", shape=(12, 64, 64))
    with running_service(root, root.parent / "state", PYTC_API_TOKENS=f"{TOKEN},{OTHER}",
                         PYTC_ACCESS_LOG="1") as svc:  # fmt: skip
        yield svc


def submit(service: Service, output: str) -> str:
    response = httpx.post(f"{service.url}/v1/jobs", json=job_doc(output), headers=BEARER, timeout=120)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def done_job(service: Service) -> str:
    job_id = submit(service, "done.zarr")
    assert wait_for_state(service.url, job_id, ("succeeded", "failed"), BEARER)["state"] == "succeeded"
    return job_id


def fragment_state(url: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
    return state


def test_the_view_link_opens_the_served_viewer_on_signed_stores(service: Service, done_job: str) -> None:
    assert httpx.get(f"{service.url}/v1/jobs/{done_job}/view").status_code == 401
    view = httpx.get(f"{service.url}/v1/jobs/{done_job}/view", headers=BEARER, timeout=60).json()
    assert view["url"].startswith(f"{service.url}/viewer/v/pytc/#!")
    assert [(la["name"], la["type"], la["channels"]) for la in view["layers"]] == [
        ("input", "image", None), ("prediction", "image", 2)]  # fmt: skip
    state = fragment_state(view["url"])
    assert state["position"] == [32.0, 32.0, 6.0]
    page = httpx.get(view["neuroglancer"])  # the client, from the neuroglancer wheel
    assert page.status_code == 200 and "main." in page.text
    for layer in state["layers"]:
        store = layer["source"]["url"].split("://", 1)[1]
        meta = httpx.get(f"{store}zarr.json")  # no bearer: the link is the grant
        assert meta.status_code == 200 and meta.json()["node_type"] in ("array", "group")  # an image group
        assert httpx.get(store).status_code == 404  # no listing
        assert httpx.get(f"{store}%2E%2E/zarr.json").status_code == 404
    png = httpx.get(f"{service.url}/v1/jobs/{done_job}/preview", params={"layer": "prediction", "z": 6},
                    headers=BEARER, timeout=60)  # fmt: skip
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_pytc_view_prints_the_link_for_a_job_and_for_an_output(service: Service, done_job: str) -> None:
    env = {"PYTC_URL": service.url, "PYTC_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    by_id = subprocess.run([sys.executable, "-m", "service", "view", done_job], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.startswith(f"{service.url}/viewer/v/pytc/#!") and "prediction (image)" in by_id.stderr
    by_path = subprocess.run(
        [sys.executable, "-m", "service", "view", f"{service.root}/done.zarr", "--dataset=pred", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert by_path.returncode == 0, by_path.stderr
    assert [la["name"] for la in json.loads(by_path.stdout)["layers"]] == ["input", "prediction"]
    outside = subprocess.run(
        [sys.executable, "-m", "service", "view", "/etc", "--dataset", "x"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert outside.returncode == 2 and "outside" in outside.stderr


def test_another_tenant_gets_no_view_of_a_jobs_output(service: Service, done_job: str) -> None:
    other = {"Authorization": f"Bearer {OTHER}"}
    assert httpx.get(f"{service.url}/v1/jobs/{done_job}/view", headers=other).status_code == 404
    params = {"path": str(service.root / "done.zarr"), "dataset": "pred"}
    assert httpx.get(f"{service.url}/v1/view", params=params, headers=other, timeout=60).status_code == 404
    assert httpx.get(f"{service.url}/v1/view", params=params, headers=BEARER, timeout=60).status_code == 200


def test_the_page_logs_in_with_a_cookie_and_never_a_url_token(service: Service, done_job: str) -> None:
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and '<form id="login-form"' in page.text
    assert httpx.post(f"{service.url}/login", json={"token": "wrong"}).status_code == 401
    with httpx.Client(base_url=service.url) as browser:
        assert browser.get("/v1/jobs").status_code == 401
        login = browser.post("/login", json={"token": TOKEN})
        cookie = login.headers["set-cookie"]
        assert login.status_code == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie
        assert done_job in browser.get("/v1/jobs").text
        assert browser.get(f"/v1/jobs/{done_job}/view").status_code == 200
        foreign = browser.post("/v1/jobs", json=job_doc("x.zarr"), headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        browser.post("/logout", json={})
        assert browser.get("/v1/jobs").status_code == 401


@pytest.mark.slow
def test_in_chromium_log_in_watch_a_job_finish_preview_it_and_open_neuroglancer(
    service: Service, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    with chromium(tmp_path) as driver:
        driver.get(f"{service.url}/")
        wait_until(lambda: driver.find_element(By.ID, "login").is_displayed(), what="the login form")
        screenshot(driver, shots, "1-login")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login-button").click()
        wait_until(lambda: driver.find_element(By.ID, "jobs").is_displayed(), what="the jobs list")
        assert TOKEN not in driver.current_url
        job_id = submit(service, "live.zarr")
        row = f"job-row-{job_id}"
        wait_until(lambda: driver.find_element(By.ID, row), what="the new job in the list")
        screenshot(driver, shots, "2-jobs")
        state = wait_until(lambda: _finished(driver.find_element(By.ID, row).text), 300, "the job to finish")
        assert state == "succeeded"
        screenshot(driver, shots, "3-done")
        driver.find_element(By.LINK_TEXT, job_id).click()
        wait_until(lambda: _previews_loaded(driver), 60, "the slice previews")
        assert "succeeded" in driver.find_element(By.ID, "job-state").text
        screenshot(driver, shots, "4-job-page")
        link = wait_until(
            lambda: driver.find_element(By.ID, "view-link").get_attribute("href"), what="view link"
        )
        driver.get(link)
        layers = wait_until(lambda: _neuroglancer_layers(driver), 90, "neuroglancer's layers to load")
        assert [la["name"] for la in layers] == ["input", "prediction"]
        assert all(la["loaded"] and not la["error"] for la in layers), layers
        assert all(la["scales"] == [1e-9, 1e-9, 1e-9] for la in layers), layers  # 1 nm voxels (no metadata)
        screenshot(driver, shots, "5-neuroglancer")
        levels = wait_until(lambda: _multiscale(driver, "prediction"), 30, "the prediction's scales")
        every = set(range(len(levels)))  # neuroglancer reads every level's chunks (coarse ones as fallbacks)
        wait_until(lambda: every <= chunk_levels(service.log.read_text()), 60, "every level's chunks served")
        driver.execute_script("window.viewer.navigationState.zoomFactor.value *= 16;")  # the whole volume
        screenshot(driver, shots, "5b-neuroglancer-zoomed-out")
    assert_every_level_at_its_scale(levels, service.root / "live.zarr")
    assert len(list(shots.glob("*.png"))) == 6


def assert_every_level_at_its_scale(levels: list[dict[str, Any]], output: Path) -> None:
    """Neuroglancer's own multiscale source for the prediction: one scale per level of the pyramid
    (the level's path and shape), each level's voxel scale relative to level 0 the product of the
    pyramid's factors (not what our metadata says: what the volume's shapes and chunks make it),
    and every level's corner where level 0's is (the half-voxel shifts of the OME translations)."""
    volume = open_volume(output, "pred")
    shape, chunks = tuple(volume.shape[-3:]), tuple(volume.chunks[-3:])
    factors = pyramid_factors(shape, chunks, None)
    assert len(factors) > 2 and len(levels) == len(factors), (levels, factors)
    for k, (level, factor) in enumerate(zip(levels, factors, strict=True)):
        assert level["url"].rstrip("/").endswith(f"/pred/{k}"), level
        assert level["shape"][-3:] == list(level_shape(shape, factor)), (k, level)
        assert level["scale"][-3:] == [float(f) for f in factor], (k, level)
        assert level["corner"][-3:] == levels[0]["corner"][-3:], (k, level)


@pytest.mark.slow
def test_in_chromium_a_training_jobs_page_draws_its_loss_curve(service: Service, tmp_path: Path) -> None:
    write_data(service.root / "train")  # a tiny labelled volume beside the inference data
    doc = training_doc(**{
        "data.image.path": "train/em.zarr", "data.label.path": "train/em.zarr", "checkpoint.dir": "runs/page",
        "solver.iterations": 300, "solver.save_every": 300,  # seconds: progress every 0.5 s, a few points
    })  # fmt: skip
    response = httpx.post(f"{service.url}/v1/jobs", json=doc, headers=BEARER, timeout=120)
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    final = wait_for_state(service.url, job_id, ("succeeded", "failed"), BEARER)
    assert final["state"] == "succeeded", final
    history = final["progress"]["loss_history"]
    assert len(history) >= 2 and history[-1][0] == 300, final["progress"]
    shots = tmp_path / "screenshots"
    with chromium(tmp_path) as driver:
        driver.get(f"{service.url}/")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login-button").click()
        wait_until(lambda: driver.find_element(By.ID, "jobs").is_displayed(), what="the jobs list")
        driver.get(f"{service.url}/#/jobs/{job_id}")
        wait_until(lambda: "succeeded" in driver.find_element(By.ID, "job-state").text, 60, "the job's state")
        curve = wait_until(lambda: _loss_curve(driver), 30, "the loss curve drawn")
        driver.execute_script("document.getElementById('loss').scrollIntoView()")
        screenshot(driver, shots, "6-training-loss")
    assert curve["visible"] and curve["columns"] >= 100, curve  # a line across the plot, not a dot
    assert len(list(shots.glob("*.png"))) == 1


def _loss_curve(driver: Any) -> dict[str, Any] | None:
    """The loss canvas: shown, and how many pixel columns hold the curve's blue (#3a7bd5) stroke."""
    curve: dict[str, Any] | None = driver.execute_script(
        """
        const c = document.getElementById("loss-canvas");
        const box = document.getElementById("loss");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const columns = new Set();
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 0 && d[i + 2] > 150 && d[i] < 120 && d[i + 1] > 80 && d[i + 1] < 170)
            columns.add((i / 4) % c.width);
        }
        return columns.size ? {visible: !box.hidden, columns: columns.size} : null;
        """
    )
    return curve


def _finished(text: str) -> str | None:
    return next((s for s in ("succeeded", "failed", "cancelled") if s in text), None)


def _previews_loaded(driver: Any) -> bool:
    return bool(driver.execute_script(
        "const imgs = [...document.querySelectorAll('img.preview')];"
        "return imgs.length >= 3 && imgs.every(i => i.complete && i.naturalWidth > 0);"
    ))  # fmt: skip


def chunk_levels(access_log: str) -> set[int]:
    """The levels of ``live.zarr``'s prediction whose chunks were served (200) by the store links."""
    found = re.findall(r'"GET /stores/[^/ ]+/pred/(\d+)/c/[\d/]+ HTTP/1.1" 200', access_log)
    return {int(level) for level in found}


def _multiscale(driver: Any, name: str) -> list[dict[str, Any]] | None:
    """The scales of ``name``'s multiscale volume as neuroglancer parsed them from the store: each
    level's URL, shape, scale relative to level 0 (the transform's diagonal) and corner offset."""
    levels: list[dict[str, Any]] | None = driver.execute_script(
        """
        const m = window.viewer.layerManager.managedLayers.find(l => l.name === arguments[0]);
        const ds = m.layer.dataSources[0].loadState.dataSource;
        const volume = ds.subsources.map(s => s.subsource.volume).find(v => v && v.multiscale);
        return volume.multiscale.scales.map(s => {
          const t = s.transform, r = Math.round(Math.sqrt(t.length)) - 1;
          return {url: s.url, shape: [...s.metadata.shape],
                  scale: [...Array(r).keys()].map(i => t[i * (r + 1) + i]),
                  corner: [...Array(r).keys()].map(i => t[r * (r + 1) + i])};
        });
        """,
        name,
    )
    return levels


def _neuroglancer_layers(driver: Any) -> list[dict[str, Any]] | None:
    layers: list[dict[str, Any]] | None = driver.execute_script(
        """
        const v = window.viewer;
        if (!v) return null;
        const out = v.layerManager.managedLayers.map(m => {
          const s = m.layer ? m.layer.dataSources[0] : undefined;
          const st = s ? s.loadState : undefined;
          const error = st && st.error ? String(st.error) : null;
          const t = st && st.transform ? st.transform.value : undefined;
          const scales = t ? [...t.inputSpace.scales].slice(-3) : null;  // z, y, x of the source
          return {name: m.name, loaded: !!(st && st.dataSource), error, scales};
        });
        return out.length && out.every(l => l.loaded || l.error) ? out : null;
        """
    )
    return layers
