"""A subscriber (a nurse station, a dashboard) on a worker's loop: its own monitor certificate over mTLS, its
filters subscribed, and one row per message it receives, written in batches (:mod:`fleetsim.engine.rowlog`).

It lives beside the shard's devices but is counted apart from them: no attempt rows, no part in the fleet's
figures. It connects as soon as its shard starts, before the devices' arrival begins, and reconnects with the
scenario's backoff when its connection ends, so the spans its subscription held (SUBACK to the end of the
connection) say which messages it was owed (:mod:`fleetsim.results.deliveries`).

Each received copy is stamped with ``time.time_ns()`` first thing in paho's message callback, the same wall
clock the devices stamped the publish with (``ts_ns`` in the payload, :func:`fleetsim.telemetry.trace`). At
QoS 2 paho hands a message over at PUBREL, so its delivery time includes the exactly-once handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetsim import scenario as sc
from fleetsim.engine.client import MqttConnection
from fleetsim.engine.connect import tcp_connect, tls_handshake
from fleetsim.engine.identity import ContextFactory, IdentitySource
from fleetsim.engine.rowlog import RowLog
from fleetsim.telemetry import trace

SUBACK_TIMEOUT_S = 10.0
REFUSED = 0x80  # a SUBACK return code at or above it refuses that filter


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """One subscriber instance: its client id (= its monitor certificate's name), what it subscribes to, how."""

    id: str
    topics: tuple[str, ...]
    qos: int = 1
    clean_session: bool = True


@dataclass
class Where:
    """Where a shard's subscribers connect: the broker, the name its certificate must carry, a local address."""

    host: str
    port: int
    server_hostname: str
    source: str | None = None


class Subscriber:
    """One subscriber's life on the loop, until :meth:`stop`."""

    def __init__(self, spec: SubscriberSpec, scenario: sc.Scenario, where: Where, ctxs: ContextFactory,
                 ids: IdentitySource, received: RowLog, spans: RowLog, rng: np.random.Generator) -> None:
        self.spec, self.sc, self.where, self.ctxs, self.ids = spec, scenario, where, ctxs, ids
        self.received, self.spans, self.rng = received, spans, rng
        self.counts: Counter[str] = Counter()  # connects, failures, subscribed, refused, messages, untraced
        self.subscribed: asyncio.Event = asyncio.Event()  # set at its first SUBACK
        self._stop = asyncio.get_running_loop().create_future()
        self._suback: asyncio.Future[list[int]] | None = None

    def stop(self) -> None:
        if not self._stop.done():
            self._stop.set_result(None)

    async def life(self) -> None:
        """Connect, subscribe, listen; again after each end, with backoff, until stopped."""
        fails = 0
        while not self._stop.done():
            conn = await self._connect()
            if conn is not None:
                fails = 0
                await self._listen(conn)
                if self._stop.done():
                    return
            else:
                fails += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sc.backoff(max(0, fails - 1), self.sc.reconnect, self.rng)):
                    await asyncio.shield(self._stop)

    async def _connect(self) -> MqttConnection | None:
        """A connection with every filter subscribed, or None (counted as a failure, with its reason)."""
        w, spec = self.where, self.spec
        conn = MqttConnection(spec.id, host=w.host, port=w.port, version=self.sc.mqtt.version,
                              keepalive=self.sc.mqtt.keepalive, clean_session=spec.clean_session, resume=False)
        conn.client.on_subscribe = self._on_subscribe
        conn.client.on_message = self._on_message
        try:
            async with asyncio.timeout(self.sc.connect_timeout):
                sock, _ = await tcp_connect(w.host, w.port, source=w.source)
                link = self.ctxs.wrap(spec.id, self.ids.get(spec.id), sock, w.server_hostname or w.host)
                await tls_handshake(link)
                code, _ = await conn.connect(link, timeout=self.sc.connect_timeout)
            if code != 0:
                raise ConnectionError(f"CONNACK refused, code {code}")
            self._suback = asyncio.get_running_loop().create_future()
            conn.client.subscribe([(f, spec.qos) for f in spec.topics])
            async with asyncio.timeout(SUBACK_TIMEOUT_S):
                codes = await self._suback
        except Exception as exc:  # every failure is counted by its kind, and retried
            self.counts[f"failed_{type(exc).__name__}"] += 1
            conn.abort()
            return None
        refused = sum(1 for c in codes if c >= REFUSED)
        if refused:
            self.counts["refused_filters"] += refused
        self.counts["connects"] += 1
        self.subscribed.set()
        return conn

    async def _listen(self, conn: MqttConnection) -> None:
        start = time.time_ns()
        assert conn.lost is not None
        await asyncio.wait([conn.lost, self._stop], return_when=asyncio.FIRST_COMPLETED)
        self.spans.append(self.spec.id, start, time.time_ns())
        if self._stop.done():
            await conn.disconnect(timeout=1.0)
        else:
            self.counts["dropped"] += 1
            conn.abort()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if self._suback is not None and not self._suback.done():
            self._suback.set_result([int(getattr(r, "value", r)) for r in reasons])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time_ns()
        found = trace(msg.payload)
        if found is None:
            self.counts["untraced"] += 1
            return
        self.counts["messages"] += 1
        kind = msg.topic.rpartition("/")[2]
        self.received.append(self.spec.id, found.device, found.seq, kind, msg.qos, found.ts_ns, now, bool(msg.dup))


def start_all(specs: tuple[SubscriberSpec, ...], make: Callable[[SubscriberSpec], Subscriber]
              ) -> tuple[list[Subscriber], list[asyncio.Task[None]]]:
    """Each subscriber made and its life started on the running loop."""
    subs = [make(s) for s in specs]
    return subs, [asyncio.create_task(s.life()) for s in subs]
