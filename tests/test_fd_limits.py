"""How many processes a fleet needs under the open-files limit (pure arithmetic; the limit is stubbed)."""

from __future__ import annotations

import resource

import pytest

from fleetsim.errors import FleetsimError
from fleetsim.runner import open_files


@pytest.fixture
def limit_1024(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: None)


def test_workers_are_sized_so_each_shard_fits(limit_1024: None) -> None:
    assert open_files.fd_workers(960) == 1 and open_files.fd_workers(961) == 2
    open_files.raise_fd_limit(2500, 3)
    with pytest.raises(FleetsimError, match="use --workers 3 or more"):
        open_files.raise_fd_limit(2500, 2)


def test_a_fleet_too_big_for_the_brokers_fleetsim_starts_is_one_line(limit_1024: None) -> None:
    """Mosquitto resets every connection past its limit: 50,000 devices on two brokers here lost 10,016."""
    open_files.check_broker_fds(2500, 3)
    with pytest.raises(FleetsimError, match=r"2,500 devices on 2 broker processes need 1,314 open files") as e:
        open_files.check_broker_fds(2500, 2)
    assert e.value.fix is not None and "--brokers 3" in e.value.fix
