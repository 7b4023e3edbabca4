"""What a scenario is: the fleet, the broker and how devices reach it, what goes wrong and when.

Every field has the default a TOML file gets when it leaves the key out, so a notebook builds one in a line::

    from fleetsim.scenario import Scenario, Group
    s = Scenario(fleet=[Group("pulse-oximeter", 500)], duration=30)

A Scenario is validated when it is made, by the same rules as a file (:mod:`fleetsim.scenario.validate`): a
mistake is one ``ScenarioError`` naming the field (``fleet[0].count``) and the fix. Sub-tables may be given as
their dataclasses or as plain dicts (``broker={"target": "mosquitto"}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fleetsim.scenario.parts import (
    API_SOURCE,
    STRATEGIES,
    Arrival,
    BrokerSpec,
    Churn,
    Event,
    FleetGroup,
    MqttSpec,
    Reconnect,
    Revocation,
    SubscriberGroup,
)
from fleetsim.scenario.validate import overridden, read_text, toml_data, validated
from fleetsim.words import count


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    return parse(read_text(path), str(Path(path)))


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario TOML text; ``source`` names it in errors. Pure: no I/O."""
    data = toml_data(text, source)
    return Scenario(**validated(data, source), source=source)


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    description: str = ""
    seed: int = 1
    duration: float = 60.0
    connect_timeout: float = 10.0
    workers: int = 0  # 0: one per core, less the cores a broker on this machine takes
    broker: BrokerSpec = field(default_factory=lambda: BrokerSpec())
    mqtt: MqttSpec = field(default_factory=lambda: MqttSpec())
    arrival: Arrival = field(default_factory=lambda: Arrival())
    churn: Churn = field(default_factory=lambda: Churn())
    reconnect: Reconnect = field(default_factory=lambda: Reconnect())
    fleet: Sequence[FleetGroup] = ()  # a list or a tuple; a tuple once made
    faults: dict[str, float] = field(default_factory=dict)
    events: Sequence[Event] = ()
    revocation: Revocation | None = None
    source_addresses: tuple[str, ...] = ()  # local addresses the devices connect from (default: chosen as needed)
    subscribers: tuple[SubscriberGroup, ...] = ()  # who reads the fleet's messages: counted apart from the fleet
    source: str = field(default=API_SOURCE, compare=False)  # where it came from, for error messages

    def __post_init__(self) -> None:
        for name, value in validated(self.to_dict(), self.source).items():
            object.__setattr__(self, name, value)

    @property
    def devices(self) -> int:
        return sum(g.count for g in self.fleet)

    @property
    def subscriber_ids(self) -> list[str]:
        """Every subscriber instance's client id (= its monitor certificate's name), group by group."""
        return [i for g in self.subscribers for i in g.client_ids()]

    def with_overrides(
        self,
        devices: int | None = None,
        duration: float | None = None,
        workers: int | None = None,
        broker: str | None = None,
        isolate: bool | None = None,
        brokers: int | None = None,
    ) -> Scenario:
        """The same scenario with CLI overrides, validated like the file.

        ``devices`` scales every group proportionally (largest remainder, groups left empty are dropped);
        a shorter ``duration`` drops the events it no longer reaches.
        """
        data, source = overridden(self.to_dict(), self.source, devices=devices, duration=duration,
                                  workers=workers, broker=broker, isolate=isolate, brokers=brokers)
        return Scenario(**validated(data, source), source=source)

    def events_dropped_by(self, shorter: Scenario) -> str | None:
        """One line naming the timed events this scenario has that ``shorter`` (its override) no longer reaches,
        or None: a drill shortened past its revoke would otherwise run without one and say nothing."""
        kept = {(e.at, e.action) for e in shorter.events}
        dropped = [e for e in self.events if (e.at, e.action) not in kept]
        if not dropped:
            return None
        named = ", ".join(f"{e.action} at {e.at:g} s" for e in dropped)
        return (f"the run ends at {shorter.duration:g} s, before {count(len(dropped), 'timed event')} of "
                f"{self.source}: {named} (they do not fire; raise --duration to keep them)")

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (validated), e.g. ``s.replace(duration=10)``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Scenario(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, TOML-ready (None fields left out); parse(to_toml()) gives back an equal Scenario."""
        churn, subs = _fields(self.churn), self.subscribers
        if isinstance(churn, dict) and isinstance(churn.get("downtime"), tuple):
            churn["downtime"] = list(churn["downtime"])
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "duration": self.duration,
            "connect_timeout": self.connect_timeout,
            "workers": self.workers,
            "broker": _fields(self.broker),
            "mqtt": _fields(self.mqtt),
            "arrival": _fields(self.arrival),
            "churn": churn,
            "reconnect": _fields(self.reconnect),
            "fleet": [_fields(g) for g in self.fleet] if isinstance(self.fleet, list | tuple) else self.fleet,
            "faults": dict(self.faults),
            "events": [_without_none(_fields(e)) for e in self.events] if isinstance(self.events, list | tuple)
            else self.events,
            **({"revocation": _revocation_data(self.revocation)} if self.revocation is not None else {}),
            **({"source_addresses": list(self.source_addresses)} if self.source_addresses else {}),
            **({"subscribers": [_subscriber_data(g) for g in subs] if isinstance(subs, list | tuple) else subs}
               if subs else {}),
        }

    def to_toml(self) -> str:
        """The scenario as run, for the results directory."""
        from fleetsim.scenario.toml_writer import dump

        return dump(self.to_dict())



def _fields(obj: Any) -> Any:
    """A sub-table as plain data, whether given as its dataclass or as a dict (anything else as it is, for the
    validator to refuse in one line)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
    return obj



def _subscriber_data(g: Any) -> Any:
    data = _fields(g)
    if isinstance(data, dict) and isinstance(data.get("topics"), tuple):
        data["topics"] = list(data["topics"])
    return data


def _without_none(table: Any) -> Any:
    return {k: v for k, v in table.items() if v is not None} if isinstance(table, dict) else table


def strategy_of(scenario: Scenario) -> str:
    """The rehearsal's enforcement strategy: the one asked for, or the broker's default."""
    asked = scenario.revocation.strategy if scenario.revocation else ""
    return asked or STRATEGIES[scenario.broker.kind][0]


def _revocation_data(r: Any) -> Any:
    data = _without_none(_fields(r))
    if isinstance(data, dict):
        if not data.get("devices"):
            data.pop("devices", None)
        elif isinstance(data["devices"], tuple):
            data["devices"] = list(data["devices"])
        for key in ("strategy", "hook", "crl_copy_to"):
            if data.get(key) == "":
                data.pop(key)
    return data
