"""Mass revocation on this machine: `fleetsim rehearse` with 5,000 devices, a lot of 10% revoked once the fleet
is steady, enforced by each broker's strategy, re-enrolled at full speed and in waves; then the same with a
10,000-entry CRL already in place.

    .venv/bin/python benchmarks/bench_rehearse.py [--devices 5000] [--rounds 1]

Every configuration runs through the CLI a user runs (worker processes, identities from a PKI on disk, the
broker fleetsim starts). The reference beside each row is the same broker's row without a prefilled CRL (for
the CRL rows) or at full speed (for the wave rows), measured in the same run. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCENARIO = """
name = "bench-rehearse"
seed = 3
duration = {duration}
connect_timeout = 30
[broker]
target = "{broker}"
[mqtt]
qos_telemetry = 1
clean_session = false
keepalive = 120
[arrival]
pattern = "linear"
rate = 250
[reconnect]
initial = 0.5
cap = 4
[[fleet]]
model = "infusion-pump"
count = {revoked}
lot = "leaked"
[[fleet]]
model = "heart-rate-monitor"
count = {healthy}
lot = "fine"
[revocation]
lot = "leaked"
steady = "connected"
steady_timeout = {steady_timeout}
strategy = "{strategy}"
reenroll_after = 3
reenroll_rate = {rate}
crl_prefill = {prefill}
"""
CONFIGS = [  # (label, broker, strategy, re-enrolment rate, CRL entries already there, the row it is compared with)
    ("embedded, full speed", "embedded", "reload", 0, 0, None),
    ("embedded, waves of 100/s", "embedded", "reload", 100, 0, "embedded, full speed"),
    ("embedded, 10,000-entry CRL", "embedded", "reload", 0, 10_000, "embedded, full speed"),
    ("mosquitto kick, full speed", "mosquitto", "kick", 0, 0, None),
    ("mosquitto kick, waves of 100/s", "mosquitto", "kick", 100, 0, "mosquitto kick, full speed"),
    ("mosquitto kick, 10,000-entry CRL", "mosquitto", "kick", 0, 10_000, "mosquitto kick, full speed"),
]


def rehearse(tmp: Path, n: int, broker: str, strategy: str, rate: float, prefill: int) -> dict[str, Any]:
    revoked = n // 10
    ramp = n / 250
    text = SCENARIO.format(broker=broker, strategy=strategy, rate=rate, prefill=prefill, revoked=revoked,
                           healthy=n - revoked, steady_timeout=ramp + 20, duration=ramp + 45)
    path = tmp / f"{broker}-{strategy}-{rate}-{prefill}.toml"
    path.write_text(text)
    out = tmp / "out"
    before = set(out.iterdir()) if out.exists() else set()
    pki = tmp / f"pki-{prefill}"  # one PKI per CRL size, reused across rounds
    r = subprocess.run([sys.executable, "-m", "fleetsim", "rehearse", str(path), "--pki", str(pki), "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    (run_dir,) = set(out.iterdir()) - before
    summary = json.loads((run_dir / "summary.json").read_text())
    if r.returncode not in (0, 1) or "first_revoked_refused_after_s" not in summary["revocation"]:
        raise RuntimeError(f"{path.name}: fleetsim rehearse exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return summary


def figures(s: dict[str, Any]) -> dict[str, Any]:
    r = s["revocation"]
    storm = r.get("storm", {})
    return {"enforced": r["first_revoked_refused_after_s"], "cut": r["last_revoked_session_gone_after_s"],
            "back": r["all_back_after_s"], "fleet_back": r["fleet_back_after_s"],
            "peak": storm.get("peak_connects_per_s"), "tls_p50": storm.get("tls_ms", {}).get("p50"),
            "tls_p99": storm.get("tls_ms", {}).get("p99"), "lost": r["healthy_messages_lost"],
            "false_accepts": r["false_accepts"], "false_rejects": r["false_rejects"],
            "crl_s": r["crl_written_after_s"], "saturated": s["simulator"]["saturated"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    n = max(100, min(args.devices, 10_000))
    rows: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="fleetsim-bench-rehearse-") as tmp_s:
        tmp = Path(tmp_s)
        for r in range(args.rounds):
            for label, broker, strategy, rate, prefill, _ in CONFIGS:
                f = figures(rehearse(tmp, n, broker, strategy, rate, prefill))
                rows[label].append(f)
                print(f"round {r + 1} {label:34s}: CRL written {f['crl_s']:.3f} s, first revoked refused "
                      f"{_s(f['enforced'])}, revoked sessions cut {_s(f['cut'])}, all back {_s(f['back'])}, "
                      f"fleet back {_s(f['fleet_back'])}; re-enrolment storm peak {f['peak']}/s, tls p50/p99 "
                      f"{_ms(f['tls_p50'])}/{_ms(f['tls_p99'])}; healthy messages lost {f['lost']}, false "
                      f"accepts {f['false_accepts']}, false rejects {f['false_rejects']}"
                      + ("; SIMULATOR SATURATED" if f["saturated"] else ""), flush=True)
    print(f"\n{n:,} devices, {n // 10:,} revoked by lot, medians of {args.rounds} round(s):")
    med = {label: {k: _median([x[k] for x in v]) for k in v[0]} for label, v in rows.items()}
    for label, *_rest, against in CONFIGS:
        m = med[label]
        ratio = ""
        if against and m["back"] and med[against]["back"]:
            ratio = f"   all-back time {m['back'] / med[against]['back']:.2f}x {against!r}"
        print(f"  {label:34s} enforced {_s(m['enforced'])}, cut {_s(m['cut'])}, all back {_s(m['back'])}, "
              f"peak {m['peak']}/s, lost {m['lost']}{ratio}")


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return statistics.median(nums) if nums else values[0]


def _s(v: Any) -> str:
    return "never" if v is None else f"{v:.2f} s"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f} ms"


if __name__ == "__main__":
    main()
