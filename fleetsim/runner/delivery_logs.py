"""A traced run's message logs (each worker's, :mod:`fleetsim.engine.rowlog`) gathered into its results
directory, and its delivery accounting (:mod:`fleetsim.results.deliveries`) written beside them.

Files written: ``publishes.parquet`` (one row per message a device published, with ``acked``),
``deliveries.parquet`` (one row per copy a subscriber received), ``subscriptions.parquet`` (each subscriber's
connections: SUBACK to end) and ``deliveries.json`` (the accounting's figures, and each subscriber's own counts).
The summary does not carry these figures yet: ``deliveries.json`` is where they are until it does.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.engine.rowlog import ACKED, PUBLISHED, RECEIVED, SUBSCRIBED
from fleetsim.results import files
from fleetsim.results.deliveries import Subscription, account
from fleetsim.scenario import Scenario

FIGURES = "deliveries.json"


def _gathered(rows_dir: Path, name: str, schema: pa.Schema) -> pa.Table:
    """Every worker's ``<name>-<shard>.parquet`` as one table, shard by shard (each keeps its own order)."""
    parts = sorted(rows_dir.glob(f"{name}-*.parquet"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    tables = [pq.read_table(p, schema=schema) for p in parts]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def subscriptions(scenario: Scenario, spans: Mapping[str, list[Any]]) -> list[Subscription]:
    """Each subscriber instance of the scenario with the spans its subscription held."""
    windows: dict[str, list[tuple[int, int | None]]] = {}
    for sub, start, end in zip(spans["subscriber"], spans["subscribed_at"], spans["ended_at"], strict=True):
        windows.setdefault(sub, []).append((start, end))
    return [Subscription(i, g.topics, g.qos, g.clean_session, tuple(windows.get(i, ())))
            for g in scenario.subscribers for i in g.client_ids()]


def gather(rows_dir: Path, run_dir: Path, scenario: Scenario, counts: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run's message tables and its delivery figures; ``counts``: each subscriber's own counters
    (connects, failures, messages). Returns the figures. The workers' logs are removed once gathered."""
    published = _gathered(rows_dir, "published", PUBLISHED).to_pydict()
    acked = _gathered(rows_dir, "acked", ACKED)
    done = set(zip(acked.column("device").to_pylist(), acked.column("seq").to_pylist(), strict=True))
    published["acked"] = [(d, s) in done for d, s in zip(published["device"], published["seq"], strict=True)]
    received = _gathered(rows_dir, "received", RECEIVED)
    spans = _gathered(rows_dir, "subscribed", SUBSCRIBED).to_pydict()
    files.write_table(run_dir / "publishes.parquet", published)
    pq.write_table(received, run_dir / "deliveries.parquet")
    files.write_table(run_dir / "subscriptions.parquet", spans)
    figures = account(published, received.to_pydict(), subscriptions(scenario, spans)).figures()
    figures["subscribers"] = dict(counts)
    files.write_json(run_dir / FIGURES, figures)
    shutil.rmtree(rows_dir, ignore_errors=True)
    return figures
