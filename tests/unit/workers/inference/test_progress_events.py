"""A block task's progress events (``workers.inference.tasks.worker_events``) on a real Dask worker:
the first one only once the task has run for the interval, so a task shorter than that sends none
(issue 17: a message through the scheduler per tiny task), a longer one keeps reporting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from service.cluster import connect, embedded_cluster
from tests.helpers import make_job
from workers.inference.job import WindowSpec
from workers.inference.tasks import BlockTask, progress_topic, worker_events

INTERVAL_S = 0.2


def _reports(task: BlockTask, pauses: list[float]) -> None:
    """On the worker: report 1, 2, ... steps, pausing ``pauses[i]`` before step i + 1."""
    send = worker_events(task, INTERVAL_S)
    assert send is not None
    for done, pause in enumerate(pauses, start=1):
        time.sleep(pause)
        send(done)


@pytest.fixture(scope="module")
def client() -> Any:
    cluster = embedded_cluster(1, in_process=True, dashboard=False)
    with connect(cluster) as dask_client:
        yield dask_client
    cluster.close()


@pytest.mark.parametrize(
    ("pauses", "sent"),
    [
        ([0.0, 0.0, 0.0], []),  # a tiny task: nothing sent, its end counts it
        ([0.0, INTERVAL_S + 0.05, 0.0, INTERVAL_S + 0.05], [2, 4]),  # a long one: once an interval
    ],
    ids=["short", "long"],
)
def test_a_short_task_sends_no_event_and_a_long_one_keeps_the_pace(
    client: Any, tmp_path: Path, pauses: list[float], sent: list[int]
) -> None:
    job = make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", WindowSpec((4, 4, 4), (2, 2, 2), "gaussian"))
    attempt = f"t{len(pauses)}"
    task = BlockTask(job, "layout", (0, 1, 2), 1, 1, attempt)
    got: list[dict[str, Any]] = []
    topic = progress_topic("layout", attempt)
    client.subscribe_topic(topic, lambda event: got.append(event[1]))
    client.submit(_reports, task, pauses, pure=False).result()
    time.sleep(0.5)  # events travel through the scheduler to this client
    client.unsubscribe_topic(topic)
    assert [e["done"] for e in got] == sent
    assert all(e["block"] == [0, 1, 2] and e["phase"] == 1 for e in got)
