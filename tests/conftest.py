"""Shared fixtures. Key material is issued at test time into pytest's temporary directories, never the repo.

``pki`` (session): one PKI made once per test run, with
  * a healthy fleet: ``HEALTHY`` ecdsa-p256 devices ``dev-00001``.. in lot ``lot-1``, model ``generic``;
  * one device per fault, id ``<fault>-00001`` (e.g. ``expired-00001``), lot ``faults``;
  * one monitor identity ``monitor`` (subscribes to every topic, publishes none: a test's subscriber).
Find them with ``pki.devices(fault="none")`` / ``pki.devices(fault="expired")`` or the helpers below.
It is shared: do not revoke, re-enrol or issue into it. A test that changes a PKI uses ``make_pki``.

``target`` (module, once per broker kind): the embedded broker or Mosquitto over the module's ``pki``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetsim.broker.embedded.broker import start_embedded
from fleetsim.broker.handle import BrokerOptions
from fleetsim.pki import Device, Fault, Pki

HEALTHY = 8
HAVE_MOSQUITTO = os.access("/usr/sbin/mosquitto", os.X_OK)
BROKER_KINDS = ["embedded", pytest.param("mosquitto", marks=pytest.mark.skipif(not HAVE_MOSQUITTO,
                                                                              reason="mosquitto not installed"))]


def fault_id(fault: Fault | str) -> str:
    """The id of the session PKI's device carrying ``fault``."""
    return f"{Fault(fault).value}-00001"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A ready PKI (see the module docstring), read-only for tests."""
    p = Pki.init(tmp_path_factory.mktemp("pki") / "pki", server_names=("broker.test",))
    p.issue(HEALTHY, workers=1)
    for fault in Fault:
        p.issue(1, prefix=fault.value, lot="faults", fault=fault, workers=1)
    p.issue_monitor("monitor")
    return p


@pytest.fixture(scope="session")
def faulty_devices(pki: Pki) -> dict[Fault, Device]:
    return {f: pki.device(fault_id(f)) for f in Fault}


@pytest.fixture
def make_pki(tmp_path: Path) -> Callable[..., Pki]:
    """A factory of fresh PKIs in this test's tmp_path, for tests that revoke, re-enrol or issue."""
    counter = iter(range(1_000))

    def make(**init_options: object) -> Pki:
        return Pki.init(tmp_path / f"pki-{next(counter)}", **init_options)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module", params=BROKER_KINDS)
def target(request: pytest.FixtureRequest, pki: Pki) -> Iterator[object]:
    """Each broker kind as fleetsim starts it (default options) over the requesting module's ``pki``: the same
    attack or rule tried against both."""
    if request.param == "embedded":
        with start_embedded(pki.root, BrokerOptions(port=0)) as handle:
            yield handle
    else:
        from fleetsim.broker.mosquitto.broker import start_mosquitto

        with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
            yield broker


# --- the fast tier (`make check`) ------------------------------------------------------------------------------
# A test is an integration test when it uses a broker, a PKI or a subprocess. The first two show in its fixtures
# (or its markers) and are marked here at collection, so nobody has to remember to; the third cannot be seen before
# the test runs, so the fast tier (FLEETSIM_FAST_TIER=1, set by `make check`) refuses it at run time with the fix.
INTEGRATION_FIXTURES = frozenset({"pki", "make_pki", "target", "faulty_devices"})
INTEGRATION_MARKERS = ("slow", "mosquitto", "integration")
FAST_TIER = os.environ.get("FLEETSIM_FAST_TIER") == "1"


def is_integration(item: pytest.Item) -> bool:
    """Uses a broker or a PKI fixture, or carries a marker that says it does I/O."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & INTEGRATION_FIXTURES) or any(item.get_closest_marker(m) for m in INTEGRATION_MARKERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_integration(item):
            item.add_marker(pytest.mark.integration)


class IntegrationInFastTier(RuntimeError):
    """Raised when a test in the fast tier starts a process or opens a socket."""


def _refuse(what: str) -> Callable[..., object]:
    def refuse(*args: object, **kwargs: object) -> object:
        raise IntegrationInFastTier(
            f"this test {what}: it is an integration test; mark it @pytest.mark.integration (or use the "
            "pki/target fixtures) so that `make check` leaves it to `make test`")
    return refuse


@pytest.fixture(autouse=True)
def _fast_tier_stays_pure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier, a test that starts a process or opens a socket fails at once, naming the fix."""
    if not FAST_TIER or request.node.get_closest_marker("integration"):
        return
    import multiprocessing.process
    import socket
    import subprocess

    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("starts a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("starts a worker process"))
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _refuse("opens a socket"))
