"""The Dask dashboard the service links to (``links.dashboard``) is the real one: bokeh is installed
with the package, so the link opens the cluster's status page, not "Dask needs bokeh"."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx

from service.cluster import connect, embedded_cluster
from service.jobs.connection import _dashboard_link


def test_the_embedded_clusters_dashboard_link_opens_the_dashboard() -> None:
    with embedded_cluster(0) as cluster, connect(cluster) as client:  # the scheduler alone serves it
        link = _dashboard_link(client)
        assert link is not None and link.startswith("http://127.0.0.1:"), link
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200
        assert "needs bokeh" not in page.text
        scripts = re.findall(r'<script[^>]+src="([^"]+bokeh[^"]*\.js[^"]*)"', page.text)
        assert scripts, "no bokeh script on the status page"
        bokeh_js = httpx.get(urljoin(link, scripts[0]), timeout=10)
        assert bokeh_js.status_code == 200 and len(bokeh_js.content) > 100_000
