"""fleetsim: simulate fleets of mutual-TLS MQTT e-health devices and measure what certificates cost a broker.

The public surface (what notebooks and scripts use; see fleetsim.api)::

    import fleetsim as fs
    pki = fs.Pki.open_or_init("pki")               # or fs.Pki.init / fs.Pki.open
    scenario = fs.Scenario(fleet=[fs.Group("pulse-oximeter", 500)], duration=30)
    with fs.start_broker("embedded", pki) as broker:
        run = fs.run(scenario, pki=pki, broker=broker)
    run.summary.phases["tls"].p99, run.attempts.to_pandas()
    ctx = pki.client_context("lot-1-pulse-oximeter-00001")   # an SSLContext for your own client

Names are imported on first use, so ``import fleetsim`` stays cheap for the CLI and the broker's own process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Run": "fleetsim.api", "Summary": "fleetsim.api", "load_run": "fleetsim.api", "run": "fleetsim.api",
    "start_broker": "fleetsim.api", "run_sweep": "fleetsim.api", "load_sweep": "fleetsim.api",
    "SweepResult": "fleetsim.api", "FleetsimError": "fleetsim.errors", "Pki": "fleetsim.pki",
    "Progress": "fleetsim.runner.progress", "Arrival": "fleetsim.scenario", "BrokerSpec": "fleetsim.scenario",
    "Churn": "fleetsim.scenario", "Event": "fleetsim.scenario", "Group": "fleetsim.scenario",
    "MqttSpec": "fleetsim.scenario", "Reconnect": "fleetsim.scenario", "Scenario": "fleetsim.scenario",
    "load_scenario": ("fleetsim.scenario", "load"), "parse_scenario": ("fleetsim.scenario", "parse"),
}
__all__ = ["Arrival", "BrokerSpec", "Churn", "Event", "FleetsimError", "Group", "MqttSpec", "Pki", "Progress",
           "Reconnect", "Run", "Scenario", "Summary", "SweepResult", "__version__", "load_run", "load_scenario",
           "load_sweep", "parse_scenario", "run", "run_sweep", "start_broker"]

if TYPE_CHECKING:
    from fleetsim.api import Run, Summary, SweepResult, load_run, load_sweep, run, run_sweep, start_broker
    from fleetsim.errors import FleetsimError
    from fleetsim.pki import Pki
    from fleetsim.runner.progress import Progress
    from fleetsim.scenario import Arrival, BrokerSpec, Churn, Event, Group, MqttSpec, Reconnect, Scenario
    from fleetsim.scenario import load as load_scenario
    from fleetsim.scenario import parse as parse_scenario


def __getattr__(name: str) -> Any:
    where = _PUBLIC.get(name)
    if where is None:
        raise AttributeError(f"module 'fleetsim' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
