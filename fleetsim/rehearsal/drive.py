"""Driving a mass-revocation rehearsal during a run: wait for the steady state, revoke the target, make the
broker enforce it by the named strategy, then re-enrol the devices in waves. Each step is timed into
events.json; fleetsim.rehearsal.plan reads what it did to the fleet from the rows.

Strategies, by broker (see fleetsim.scenario.parts.STRATEGIES):
  embedded   reload   tell the broker at once (it reloads the CRL and drops the revoked live sessions)
             poll     let it find the new CRL itself (it watches crl.pem)
  mosquitto  sighup   copy the CRL in and SIGHUP: new handshakes refused, live sessions stay (as in production)
             restart  restart the broker: every device reconnects, the revoked ones are refused (collateral)
             kick     disconnect the revoked clients by name, where the broker offers a way (dynamic security)
             none     leave them connected
  external   hook     write the CRL where the user says, run the user's command; then watch what happens

The revoke step writes crl.pem and tells no broker (``notify_brokers=False``), so the enforcement step is the
strategy's alone and each is timed on its own: nothing the new CRL causes can come before it is written. Other
brokers registered on the PKI are told after that step (but for `poll`, whose broker must find it itself).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetsim.broker.handle import BrokerHandle
from fleetsim.errors import BrokerError, FleetsimError
from fleetsim.pki import Pki
from fleetsim.pki.layout import write_file
from fleetsim.rehearsal import plan
from fleetsim.scenario import Scenario
from fleetsim.scenario.schema import strategy_of

HOOK_TIMEOUT_S = 60.0


class Rehearsal:
    """The rehearsal's steps as they fall due; ``fire_due`` is called by the runner's loop several times a second."""

    def __init__(self, scenario: Scenario, pki: Pki, broker: BrokerHandle, fleet: Mapping[str, tuple[str, str]]):
        assert scenario.revocation is not None
        self.r, self.pki, self.broker = scenario.revocation, pki, broker
        self.strategy = strategy_of(scenario)
        unknown = sorted(set(self.r.devices) - set(fleet))
        if unknown:
            raise FleetsimError(f"the rehearsal names devices the fleet does not have: {', '.join(unknown[:3])}",
                                "list ids of healthy devices of this scenario (see devices.parquet of a run)")
        self.targets = plan.targets(self.r.lot, self.r.model, self.r.devices, self.r.fraction, fleet,
                                         scenario.seed)
        if not self.targets:
            raise FleetsimError("the rehearsal's target names no healthy device",
                                "point [revocation] at a lot or model whose devices have no fault")
        if self.strategy == "kick" and not getattr(getattr(broker, "extras", None), "dynsec_admin", None):
            raise FleetsimError(f"the {broker.kind} broker was not started with its dynamic-security plugin",
                                "let fleetsim start Mosquitto for a kick rehearsal, or use sighup/restart/none")
        self.expected = len(fleet)
        self.revoked_at: float | None = None
        self.waves: list[tuple[float, list[str]]] = []

    def fire_due(self, elapsed: float, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        if self.revoked_at is None and self._steady(elapsed, state):
            out.append(self._revoke(elapsed, state))
        while self.waves and self.waves[0][0] <= elapsed:
            _, ids = self.waves.pop(0)
            out.append(self._reenroll(elapsed, ids))
        return out

    def _steady(self, elapsed: float, state: Mapping[str, Any]) -> bool:
        if isinstance(self.r.steady, float | int):
            return elapsed >= float(self.r.steady)
        return state.get("connected", 0) >= self.expected or elapsed >= self.r.steady_timeout

    def _revoke(self, elapsed: float, state: Mapping[str, Any]) -> dict[str, Any]:
        self.revoked_at = elapsed
        t = time.perf_counter()
        # the CRL on disk, nothing more: were the registered brokers told here (as a plain revoke does), the
        # embedded broker would cut the revoked sessions inside this step, before it ends, and `poll` would not poll
        revoked = self.pki.revoke(device_ids=self.targets, reason=self.r.reason, notify_brokers=False)
        crl_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        detail = self._enforce()
        enforce_ms = (time.perf_counter() - t) * 1000
        if self.strategy != "poll":  # the other brokers registered on this PKI, as a plain revoke tells them
            self.pki.notify_brokers()
        record = {"at": round(elapsed, 3), "action": "revoke", "fired_at_s": round(elapsed, 3),
                  "devices": len(self.targets), "steady": f"{state.get('connected', 0)} of {self.expected} connected",
                  "revoke_and_crl_ms": round(crl_ms, 3), "strategy": self.strategy,
                  "enforce_ms": round(enforce_ms, 3),
                  "enforced_at_s": round(elapsed + (crl_ms + enforce_ms) / 1000, 3),
                  "crl_number": self.pki.inventory.crl_number, **detail, "device_ids": self.targets,
                  "serials": [format(d.serial, "x") for d in revoked]}
        if self.r.reenroll_after is not None:
            self.waves = plan.waves(self.targets, self.r.reenroll_rate,
                                         record["enforced_at_s"] + self.r.reenroll_after)
        return record

    def _enforce(self) -> dict[str, Any]:
        s = self.strategy
        if s in ("reload", "sighup"):
            self.broker.reload_crl()
        elif s == "restart":
            self.broker.restart()
        elif s == "kick":  # CRL first (new handshakes refused), then the live sessions cut by name
            self.broker.reload_crl()
            return {"kick_s": round(self.broker.disconnect(self.targets), 3)}  # type: ignore[attr-defined]
        elif s == "hook":
            return self._hook()
        return {}

    def _hook(self) -> dict[str, Any]:
        """External broker: the CRL where the user said, then the user's command (a reload, a kick, a deploy)."""
        out: dict[str, Any] = {}
        if self.r.crl_copy_to:
            try:
                write_file(Path(self.r.crl_copy_to), self.pki.layout.crl.read_bytes())
            except OSError as exc:
                raise BrokerError(f"cannot write the CRL to {self.r.crl_copy_to}: {exc.strerror or exc}",
                                  "fix [revocation] crl_copy_to or its permissions") from None
            out["crl_copied_to"] = self.r.crl_copy_to
        if self.r.hook:
            try:
                done = subprocess.run(shlex.split(self.r.hook), capture_output=True, text=True,
                                      timeout=HOOK_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BrokerError(f"the rehearsal's hook {self.r.hook!r} failed: {exc}",
                                  "fix [revocation] hook") from None
            out.update(hook_exit_code=done.returncode, hook_output=(done.stdout + done.stderr)[-300:])
        return out

    def _reenroll(self, elapsed: float, ids: list[str]) -> dict[str, Any]:
        t = time.perf_counter()
        self.pki.reenroll(ids)
        return {"at": round(elapsed, 3), "action": "reenroll", "fired_at_s": round(elapsed, 3),
                "devices": len(ids), "reenroll_ms": round((time.perf_counter() - t) * 1000, 3), "device_ids": ids}
