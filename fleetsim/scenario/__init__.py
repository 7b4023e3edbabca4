"""Scenarios: which fleet connects to which broker, how, and what goes wrong; read from TOML or built in Python.

One module per job, each importing only those listed before it: :mod:`.parts` (the sub-tables, with the
defaults a file gets, and the names each field accepts), :mod:`.validate` (plain data checked, one line per
mistake), :mod:`.schema` (the Scenario, made through those rules whether read from a file or built in Python),
:mod:`.toml_writer` (the scenario as run, back to TOML) and :mod:`.timing` (arrival times, backoff, fault
assignment: the maths the engine uses).

    s = load("scenarios/ward.toml").with_overrides(devices=1000)
    s = Scenario(fleet=[Group("pulse-oximeter", 500)], duration=30)
"""

from fleetsim.names import TLS_VERSIONS
from fleetsim.scenario.parts import (
    ACTIONS,
    AUTHS,
    FAULTS,
    MAX_DEVICES,
    MAX_DURATION,
    MAX_SUBSCRIBERS,
    MAX_WORKERS,
    MQTT_VERSIONS,
    PATTERNS,
    TARGETS,
    Arrival,
    BrokerSpec,
    Churn,
    Event,
    FleetGroup,
    Group,
    MqttSpec,
    Reconnect,
    Revocation,
    SubscriberGroup,
)
from fleetsim.scenario.schema import Scenario, load, parse
from fleetsim.scenario.timing import arrival_times, assign_faults, backoff

__all__ = ["ACTIONS", "AUTHS", "FAULTS", "MAX_DEVICES", "MAX_DURATION", "MAX_SUBSCRIBERS", "MAX_WORKERS",
           "MQTT_VERSIONS", "PATTERNS", "TARGETS", "TLS_VERSIONS", "Arrival", "BrokerSpec", "Churn", "Event", "FleetGroup",
           "Group", "MqttSpec", "Reconnect", "Revocation", "Scenario", "SubscriberGroup", "arrival_times",
           "assign_faults", "backoff", "load", "parse"]
