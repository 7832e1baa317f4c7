"""The Dask settings of our workers: each is a real Dask key, and the user's own value wins."""

from __future__ import annotations

import dask
import distributed  # noqa: F401  (loads its defaults into dask.config)
import pytest

from workers.runtime.dask_settings import SETTINGS, env_name, worker_settings


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_each_setting_is_a_key_dask_has_and_its_variable_is_the_one_dask_reads(key: str) -> None:
    dask.config.get(key)  # a typo would raise KeyError here, and the setting would do nothing
    parsed = dask.config.collect_env({env_name(key): "7s"})
    with dask.config.set(parsed):
        assert dask.config.get(key) == "7s"


def test_the_users_environment_wins_setting_by_setting() -> None:
    assert worker_settings({}) == SETTINGS
    mine = worker_settings({env_name("distributed.admin.tick.interval"): "20ms"})
    assert "distributed.admin.tick.interval" not in mine
    assert mine == {k: v for k, v in SETTINGS.items() if k != "distributed.admin.tick.interval"}
    assert env_name("distributed.admin.system-monitor.interval") == (
        "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL"
    )
