"""Turn a run's summary into tables a person reads at the end of a run or with `fleetsim report`.

Every cell is a ``rich.text.Text``, never markup: scenario names, details and paths keep their brackets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fleetsim.results.shape import Summary
from fleetsim.words import count

COLUMNS = ("n", "p50", "p90", "p99", "p99.9", "max")


def fmt(v: Any) -> str:
    """A figure as a cell shows it: '-' for not measured, thousands separated, floats to two places."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(title: str, columns: Iterable[str] = (), *, header: bool = True) -> Table:
    t = Table(title=Text(title), title_justify="left", show_header=header)
    for i, c in enumerate(columns):
        t.add_column(Text(c), justify="left" if i == 0 else "right")
    return t


def _row(t: Table, *cells: Any) -> None:
    t.add_row(*(c if isinstance(c, Text) else Text(fmt(c)) for c in cells))


def phases_table(phases: Mapping[str, Mapping[str, Any]]) -> Table:
    t = _table("Connection phases (ms, connected attempts; wait = the simulator's own queue)", ("phase", *COLUMNS))
    for phase, dist in phases.items():
        _row(t, phase, *(dist.get(c) for c in COLUMNS))
    return t


def outcomes_table(outcomes: Mapping[str, int]) -> Table:
    t = _table("Attempts by outcome", ("outcome", "attempts", "share"))
    total = sum(outcomes.values()) or 1
    for name, n in outcomes.items():
        _row(t, name, n, f"{100 * n / total:.1f}%")
    return t


def faults_table(faults: Mapping[str, Mapping[str, int]]) -> Table:
    t = _table("Faulty identities: attempts by how they ended", ("fault", "ended as"))
    for fault, classes in faults.items():
        _row(t, fault, ", ".join(f"{k} {v:,}" for k, v in classes.items()))
    return t


def fleet_rows(s: Summary) -> list[tuple[str, str]]:
    """(what, value) rows of the fleet: the terminal's summary table and the HTML page's overview share them."""
    f, up, rate = s.get("fleet", {}), s.get("fleet_up", {}), s.get("connect_rate", {})
    states = f.get("states", {})
    gave = ", ".join(f"{n:,} after {count(int(k), 'attempt')}"
                     for k, n in f.get("gave_up_after_attempts", {}).items())
    rows = [
        ("devices connected at end", f"{f.get('connected_at_end', 0):,} / {s.get('devices', 0):,}  (peak "
                                     f"{f.get('peak_connected', 0):,} at {fmt(f.get('peak_at_s'))} s, ever "
                                     f"{f.get('ever_connected', 0):,})"),
        ("devices by state", f"connected {states.get('connected', 0):,}, retrying {states.get('retrying', 0):,}, "
                             f"gave up {states.get('gave_up', 0):,}" + (f" ({gave})" if gave else "")
                             + f", never tried {states.get('never_tried', 0):,}"),
    ]
    if up.get("rate_per_s"):
        rows.append(("fleet came up (first attempt to last first connect)",
                     f"{count(up['devices'], 'device')} in {up['span_s']:,.2f} s: {up['rate_per_s']:,.1f}/s"))
    rows.append(("connects/s (mean over the run, peak second)",
                 f"{fmt(rate.get('mean_per_s'))}, {fmt(rate.get('peak_per_s'))}"
                 + (f" in second {rate['peak_second']}" if rate.get("peak_second") is not None else "")))
    rows.append(("connection attempts", fmt(s.get("attempts"))))
    if drops := {k: v for k, v in s.get("drops", {}).items() if k != "stop"}:
        rows.append(("connections dropped", ", ".join(f"{k} {v:,}" for k, v in drops.items())))
    return rows


def message_rows(s: Summary) -> list[tuple[str, str]]:
    """(what, value) rows of the messages, QoS 0 apart from QoS 1/2."""
    m = s.get("messages", {})
    q0, q1 = m.get("qos0", {}), m.get("qos1plus", {})
    rows = []
    if q0.get("published"):
        rows.append(("QoS 0 messages sent (fire and forget)",
                     f"{q0['sent']:,} of {q0['published']:,}" + (f" ({q0['unsent']:,} never left the device)"
                                                                  if q0.get("unsent") else "")))
    if q1.get("published") or not q0.get("published"):
        ack = q1.get("ack_ms", {})
        rows.append(("QoS 1/2 published / acknowledged / lost", f"{q1.get('published', 0):,} / "
                     f"{q1.get('acknowledged', 0):,} / {q1.get('lost', 0):,}"))
        rows.append(("ack latency p50 / p99 (ms)", f"{fmt(ack.get('p50'))} / {fmt(ack.get('p99'))}"))
    return rows


def machine_rows(s: Summary) -> list[tuple[str, str]]:
    """(what, value) rows of the simulator, the machine and the broker."""
    sim, b = s.get("simulator", {}), s.get("broker", {})
    lag, cpu = sim.get("loop_lag_ms", {}), sim.get("busiest_worker_cpu", {})
    rows = [("simulator loop lag p50 / p99 / max (ms)", f"{fmt(lag.get('p50'))} / {fmt(lag.get('p99'))} / "
                                                        f"{fmt(lag.get('max'))}"),
            ("busiest worker CPU p50 / max", f"{_pct(cpu.get('p50'))} / {_pct(cpu.get('max'))}")]
    if (busy := s.get("machine", {}).get("busy_in_storm")) is not None:
        rows.append(("machine busy over the storm", f"{busy['share']:.0%} of {count(busy['cores'], 'core')} "
                                                    f"({busy['from_s']:.1f}-{busy['to_s']:.1f} s)"))
    if (adm := sim.get("admission", {})).get("peak_in_flight"):
        rows.append(("attempts in flight per worker: peak / cap", _admission_text(adm)))
    if (ready := sim.get("set_up_before_t0")) is not None:
        rows.append(("devices set up before t0", _set_up_text(ready)))
    if not b.get("available", True):
        rows.append(("broker figures", "not available: " + str(b.get("why", ""))))
        return rows
    if b.get("cpu_seconds") is not None:
        procs = len(b.get("processes", [])) or 1
        rows.append(("broker CPU (s)", fmt(round(float(b["cpu_seconds"]), 3))
                     + (f" over {procs} processes (restarts)" if procs > 1 else "")))
    if b.get("takeovers"):
        rows.append(("session takeovers (security event)", f"{b['takeovers']:,}  (a client id connected while "
                                                           "already connected: a cloned identity?)"))
    if b.get("cpu_ms_per_handshake") is not None:
        lo, hi = b["storm_window_s"]
        rows.append(("broker CPU per handshake (ms)", f"{b['cpu_ms_per_handshake']:,.2f}  (storm {lo:g}-{hi:g} s: "
                                                      f"{count(b['handshakes_in_storm'], 'handshake')}, "
                                                      f"{count(b['messages_in_storm'], 'message')})"))
    if b.get("cpu_ms_per_message") is not None:
        rows.append(("broker CPU per message (ms)", f"{b['cpu_ms_per_message']:,.3f}  (after the storm: "
                                                    f"{b['messages_after_storm']:,} published + acknowledged)"))
    rows += _bounds_rows(b)
    return rows


BOUNDS = (("qos0_discarded", "QoS 0 discarded"), ("slow_consumers_dropped", "slow consumers dropped"),
          ("subscriptions_refused", "subscriptions refused"), ("queued_dropped", "queued messages dropped"))


def _bounds_rows(b: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the broker did to keep one device from hurting the others (fleetsim.broker.embedded.outbound,
    .subscriptions, .session_queue); only a broker that counts them (the embedded one) has the row."""
    if not all(key in b for key, _ in BOUNDS):
        return []
    return [("broker: " + " / ".join(label for _, label in BOUNDS), " / ".join(f"{b[key]:,}" for key, _ in BOUNDS))]


def _admission_text(adm: Mapping[str, Any]) -> str:
    text = ", ".join(f"{peak:,} / {'-' if cap is None else f'{cap:,}'}"
                     for peak, cap in zip(adm["peak_in_flight"], adm["cap"], strict=True))
    held = [c for c in adm.get("syn_ceiling", []) if c is not None]
    return text + (f"  (held at {min(held):,} after dropped SYNs)" if held else "")


def _set_up_text(ready: Mapping[str, Any]) -> str:
    late = ready["of"] - ready["devices"]
    return f"{ready['devices']:,} of {ready['of']:,}" + (
        f"  ({late:,} set up at their first attempt, inside the clock: their setup_ms is the simulator's)"
        if late else "")


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.0f}%"


def overview_table(s: Summary) -> Table:
    t = _table(f"Run summary: {s.get('scenario', '')}", ("what", "value"), header=False)
    rows = [*fleet_rows(s), *message_rows(s), *machine_rows(s), ("wall time (s)", fmt(s.get("wall_s")))]
    for why, label in ((s.get("stopped_early"), "stopped early"), (s.get("interrupted"), "ended early")):
        if why:
            rows.append((label, str(why)))
    for what, value in rows:
        _row(t, what, value)
    return t


def events_table(events: Sequence[Mapping[str, Any]]) -> Table:
    t = _table("Timed events (each step's time, and what it did to the fleet)", ("at (s)", "action", "what happened"))
    for e in events:
        steps = ", ".join(f"{k} {fmt(v)}" for k, v in e.items() if k not in ("at", "action", "fired_at_s"))
        _row(t, e.get("fired_at_s"), str(e.get("action")), steps)
    return t


def _after(v: Any) -> str:
    return "never" if v is None else f"{v:,.3f} s"


def revocation_rows(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The rehearsal's steps, each timed from the decision; honesty counts; the re-enrolment storm."""
    rows = [
        ("CRL written", _after(r.get("crl_written_after_s"))),
        ("broker's enforcement step returned", _after(r.get("enforcement_step_after_s"))),
        ("first revoked device refused", _after(r.get("first_revoked_refused_after_s"))),
        ("last revoked live session gone", _after(r.get("last_revoked_session_gone_after_s"))
         + (f"  ({r['revoked_still_connected_at_end']:,} still connected at the end)"
            if r.get("revoked_still_connected_at_end") else "")),
        ("last revoked device refused", _after(r.get("last_revoked_refused_after_s"))),
        ("false accepts (revoked let in, or left in by a strategy that cuts)", fmt(r.get("false_accepts"))),
        ("false rejects (healthy refused or dropped)", fmt(r.get("false_rejects"))
         + (f"  (+ {r['collateral_drops']:,} collateral drops of the strategy)" if r.get("collateral_drops") else "")),
        ("healthy devices' QoS 1/2 messages lost", fmt(r.get("healthy_messages_lost"))),
    ]
    if r.get("reenrolled"):
        st = r.get("storm", {})
        rows += [
            ("re-enrolled (waves, PKI time)", f"{r['reenrolled']:,} in {count(r.get('waves', 1), 'wave')}, "
                                              f"{r.get('reenroll_ms', 0):,.0f} ms"),
            ("every re-enrolled device back", _after(r.get("all_back_after_s"))),
            ("fleet back to its level before", _after(r.get("fleet_back_after_s"))
             + f"  ({count(r.get('connected_before', 0), 'device')})"),
            ("re-enrolment storm: peak connects/s, tls p50 / p99 (ms)",
             f"{st.get('peak_connects_per_s', 0):,}, {fmt(st.get('tls_ms', {}).get('p50'))} / "
             f"{fmt(st.get('tls_ms', {}).get('p99'))}"
             + (f", broker CPU {st['broker_cpu_s']:,.2f} s" if st.get("broker_cpu_s") is not None else "")),
        ]
    return rows


def revocation_table(r: Mapping[str, Any]) -> Table:
    t = _table(f"Revocation rehearsal: {count(r.get('revoked', 0), 'device')}, strategy {r.get('strategy')} "
               "(times from the decision)", ("what", "value"), header=False)
    for what, value in revocation_rows(r):
        _row(t, what, value)
    return t


def thresholds_table(results: Sequence[Mapping[str, Any]]) -> Table:
    t = _table("--fail-on", ("rule", "measured", "verdict"))
    for r in results:
        verdict = Text("BREACHED", "bold red") if r["breached"] else Text("ok", "green")
        _row(t, r["rule"], "-" if r["value"] is None else f"{r['value']:,.3f}{r['unit']}", verdict)
    return t


SWEEP_SETTINGS = ("broker", "auth", "key_type", "tls_version", "session_resumption", "crl_size")


def sweep_table(index: Mapping[str, Any]) -> Table:
    """One row per cell: the settings that vary, then what they cost."""
    cells = index.get("cells", [])
    varying = [k for k in SWEEP_SETTINGS if len({str(c["settings"][k]) for c in cells}) > 1] or ["auth"]
    t = _table(f"Sweep {index.get('name', '')}: what each setting costs (burst: rate and CPU; steady: latency)",
               (*varying, "conn/s", "broker CPU ms", "device TLS CPU ms", "p50 ms", "p99 ms", "bytes out/in",
                "note"))
    for c in cells:
        f, lat = c["figures"], c["figures"]["latency_ms"].get("total", {})
        wire = f"{f['handshake_bytes_sent']:,}/{f['handshake_bytes_received']:,}" \
            if "handshake_bytes_sent" in f else "-"
        note = Text("simulator saturated: not comparable", "yellow") if f["saturated"] else \
            Text(f"{f['burst_failures'] + f['steady_failures']:,} failed attempts", "red") \
            if f["burst_failures"] or f["steady_failures"] else Text("")
        _row(t, *(str(c["settings"][k]).lower() for k in varying), f.get("connects_per_s"),
             f.get("broker_cpu_ms_per_handshake"), f.get("device_tls_cpu_ms"), lat.get("p50"),
             lat.get("p99"), wire, note)
    return t


def floor_table(floor: Mapping[str, Any]) -> Table:
    """Signatures (the certificates' key types) and the key exchange each in a column of its own: X25519 signs
    nothing."""
    t = _table(f"Crypto floor on this machine ({floor.get('openssl', 'openssl speed')}): operations per second",
               ("algorithm", "sign/s", "verify/s", "key exchange/s"))
    for key_type, ops in sorted(floor.get("key_types", {}).items()):
        _row(t, key_type, ops.get("sign_per_s"), ops.get("verify_per_s"), "-")
    if floor.get("x25519"):
        _row(t, "x25519", "-", "-", floor["x25519"].get("exchange_per_s"))
    return t


def print_sweep(index: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console(markup=False)
    console.print(sweep_table(index))
    if index.get("crypto_floor", {}).get("available"):
        console.print(floor_table(index["crypto_floor"]))
    for x in index.get("cross_check", []):
        console.print(Text(f"cross-check {x['cell']}: openssl s_time {x['s_time_connections_per_s']:,.0f} full "
                           f"handshakes/s ({x['s_time_ms_per_connection']:.2f} ms each, one C client) vs fleetsim "
                           f"steady tcp+tls p50 {x['fleetsim_tcp_tls_p50_ms']:.2f} ms"))


def render(summary: Summary) -> Group:
    parts: list[Any] = [overview_table(summary)]
    if summary.get("phases_ms"):
        parts.append(phases_table(summary["phases_ms"]))
    if summary.get("outcomes"):
        parts.append(outcomes_table(summary["outcomes"]))
    if summary.get("faults"):
        parts.append(faults_table(summary["faults"]))
    if summary.get("events"):
        parts.append(events_table(summary["events"]))
    if summary.get("revocation"):
        parts.append(revocation_table(summary["revocation"]))
    if summary.get("thresholds"):
        parts.append(thresholds_table(summary["thresholds"]))
    parts += [Text.assemble(("warning: ", "bold yellow"), w) for w in summary.get("warnings", [])]
    return Group(*parts)


def print_summary(summary: Summary, console: Console | None = None) -> None:
    (console or Console(markup=False)).print(render(summary))
