"""Dask's ``Compute Failed`` record is demoted to DEBUG; every other record passes unchanged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workers.runtime.task_logs import WORKER_LOGGER, TaskFailuresAtDebug, demote_task_failures


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def worker_log() -> Iterator[tuple[logging.Logger, _Collect]]:
    logger, collect = logging.getLogger(WORKER_LOGGER), _Collect()
    level, filters, propagate = logger.level, list(logger.filters), logger.propagate
    logger.addHandler(collect)
    logger.propagate = False
    logger.filters = [f for f in filters if not isinstance(f, TaskFailuresAtDebug)]
    try:
        yield logger, collect
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
        logger.filters, logger.propagate = filters, propagate


def _compute_failed(logger: logging.Logger) -> None:
    # as distributed.worker logs it
    logger.error("Compute Failed\nKey:       %s\nException: %r\nTraceback: %r\n", "k", "E()", "  File ...")


def test_compute_failed_is_dropped_unless_debug_is_on(worker_log: tuple[logging.Logger, _Collect]) -> None:
    logger, collect = worker_log
    logger.setLevel(logging.INFO)
    demote_task_failures()
    demote_task_failures()  # once is enough: installing twice adds no second filter
    assert sum(isinstance(f, TaskFailuresAtDebug) for f in logger.filters) == 1
    _compute_failed(logger)
    logger.error("Worker stream died")  # anything else passes as it was
    assert [(r.levelno, r.getMessage()) for r in collect.records] == [(logging.ERROR, "Worker stream died")]
    logger.setLevel(logging.DEBUG)
    _compute_failed(logger)
    assert collect.records[-1].levelno == logging.DEBUG
    assert collect.records[-1].getMessage().startswith("Compute Failed")


def test_without_the_filter_dask_logs_it_as_an_error(worker_log: tuple[logging.Logger, _Collect]) -> None:
    logger, collect = worker_log  # the test above is not vacuous
    logger.setLevel(logging.INFO)
    _compute_failed(logger)
    assert [r.levelno for r in collect.records] == [logging.ERROR]


def test_a_task_cut_off_by_the_close_is_demoted_too() -> None:
    logger, collect = logging.getLogger("distributed.worker.state_machine"), _Collect()
    level, filters, propagate = logger.level, list(logger.filters), logger.propagate
    logger.addHandler(collect)
    logger.propagate = False
    try:
        logger.setLevel(logging.INFO)
        demote_task_failures()
        logger.warning("Async instruction for <Task cancelled name='execute(k)'> ended with CancelledError")
        logger.warning("Compute Failed")  # another logger's message: not this one's to demote
        assert [r.getMessage() for r in collect.records] == ["Compute Failed"]
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
        logger.filters, logger.propagate = filters, propagate
