"""fleetsim's embedded broker: amqtt behind a TLS server that REQUIRES client certificates.

Why its own TLS server: amqtt's TLS listener only asks for client certificates (CERT_OPTIONAL) and knows
no CRL, and asyncio's TLS server drops the alert of a failed handshake. Here (see ``tls_server``) plain
TCP is accepted, TLS is driven over memory BIOs with CERT_REQUIRED + VERIFY_CRL_CHECK_LEAF, the alert
("certificate revoked", "unknown ca", ...) reaches the device, and established connections are handed to
amqtt through its external listener (``Broker.external_connected``).

What the front decides before amqtt acts (amqtt deletes the session a CONNECT names before asking its auth
plugin, decodes bad UTF-8 into text, reads a declared length whole):
* packets (``stream`` + ``mqtt_wire``): every packet is framed and checked first; the whole CONNECT is
  read, parsed strictly and admitted before amqtt reads it; oversized (``max_packet_size``) or malformed packets
  close the connection; no accepted session within ``connect_timeout_s`` closes it too;
* identity (``cert_rules``) and admission (``auth.admit``): a leaf of the issuing CA with clientAuth whose
  CN and SPIFFE SAN agree; that name is the only client id; its serial is not on the CRL (a resumed session
  skipped the handshake's check); the password when configured; otherwise CONNACK 5;
* topics (``topic_rules``, asked by amqtt's topic plugin): a device under its own subtree, a monitor reads all;
* sessions: a connection silent for 1.5 x its keepalive is closed (amqtt then publishes its will), silence measured
  on the time the loop could run (``loop_clock``: a stall of the broker is not the devices'); a client id
  that connects again closes its earlier connection, which amqtt winds down before it reads the new CONNECT
  (takeover, counted). amqtt's own session defects are fixed in ``amqtt_fixes``.

CRL (``crl``): judged before it is loaded, renewed at half its validity; the broker registers with the
PKI (``fleetsim.pki.notify``) so a revoke is enforced before it returns, polls DIR/crl.pem every 0.2 s for other
writers, and reloads on SIGHUP. A fresh server context serves the next handshakes; with ``drop_revoked`` live
sessions whose serial the new CRL lists are closed. Healthy sessions stay.

Stats: ``stats()`` -> dict, and with ``stats_port`` set a loopback JSON endpoint:
``GET http://127.0.0.1:<stats_port>/stats`` (same dict) and ``POST .../reload-crl``. Keys: accepted
(TLS handshakes completed), authorized (CONNACK accepted), rejected {reason: count} with OpenSSL's
reason ("certificate revoked", "peer did not return a certificate", ...) or the front's ("client id mismatch",
"packet too large", "subscribe not authorized", a cert_rules reason, ...); handshake_ms {count, mean, p50, p90, p99, max,
histogram}; cpu_seconds (this process's user+system CPU); current_connections; dropped_revoked; takeovers; crl{...};
qos0_discarded and slow_consumers_dropped (``outbound``: what one connection may hold unsent is bounded);
subscriptions_refused (SUBACK 0x80: the client id holds ``max_subscriptions``; ``subscriptions`` indexes amqtt's
table so a publish is matched only against filters that can match it, and delivered once per subscriber);
queued_dropped (QoS 1/2 messages a session's full queue did not take: ``session_queue``; a connection holding too
many QoS 2 messages without PUBREL is a ``rejected`` reason); retained {topics, bytes} and retained_refused (retained PUBLISHes past ``max_retained_per_client`` or
``max_retained_bytes``, delivered but not kept: ``retained``, ``retained_replay``).

    async with EmbeddedBroker(pki_dir, BrokerOptions(port=0)) as broker:
        broker.port; broker.reload_crl(); broker.stats()

For a broker in its own process (CPU measured apart from the simulator): ``start_embedded`` in
``fleetsim.broker.embedded.process`` (re-exported here), which runs ``fleetsim.broker.embedded.child``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter

from fleetsim.broker.embedded import subscriptions, tls_context
from fleetsim.broker.embedded.amqtt_fixes import ConformingBroker
from fleetsim.broker.embedded.auth import MTLS, PLAIN, PasswordFile, Peer, Verdict, admit, connack
from fleetsim.broker.embedded.cert_rules import CertRules, Refused
from fleetsim.broker.embedded.crl import CrlKeeper
from fleetsim.broker.embedded.loop_clock import LoopClock
from fleetsim.broker.embedded.metrics import BrokerMetrics
from fleetsim.broker.embedded.mqtt_wire import Connect, Violation
from fleetsim.broker.embedded.outbound import BoundedWriter
from fleetsim.broker.embedded.plugins import CURRENT_GATE, CURRENT_TOPICS
from fleetsim.broker.embedded.process import EmbeddedProcess, start_embedded
from fleetsim.broker.embedded.retained import Limits
from fleetsim.broker.embedded.session_queue import QueueBounds
from fleetsim.broker.embedded.stats_http import start_json_server
from fleetsim.broker.embedded.stream import ConnackWatch, PacketReader
from fleetsim.broker.embedded.subscriptions import SubscriptionTable
from fleetsim.broker.embedded.tls_server import TlsConnection, TlsReader, TlsWriter, set_nodelay
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.topic_rules import NOTHING, check_patterns, grant_for
from fleetsim.errors import BrokerError
from fleetsim.pki import notify
from fleetsim.pki.layout import Layout

__all__ = ["EmbeddedBroker", "EmbeddedProcess", "start_embedded"]

log = logging.getLogger("fleetsim.broker.embedded")

AUTH_PLUGIN = "fleetsim.broker.embedded.plugins.FleetsimAuthPlugin"
TOPIC_PLUGIN = "fleetsim.broker.embedded.plugins.FleetsimTopicPlugin"
TAKEOVER_WAIT_S = 5.0  # how long a takeover waits for the old connection's session to wind down
IDENTIFIER_REJECTED = 2  # MQTT 3.1.1 CONNACK return code
CLIENT_ID_HELD = "client id held on the certificate listener"
WARNED_LIMIT = 10_000  # identities whose topic refusals were logged once; past it they are only counted
RESUMPTION_OFF = "resumed session (resumption is off)"
UNRELEASED = "QoS 2 messages awaiting PUBREL past max_inflight_messages"
BACKLOG = 4096  # fleets connect in bursts; asyncio's default of 100 drops SYNs


@dataclass(eq=False)
class Holder:
    """The connection a client id is served on: how to close it, and when amqtt is done with it."""

    peer: Peer
    abort: Callable[[], None]
    unsent: Callable[[], int] = lambda: 0  # bytes written to the connection, not yet on the socket
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _amqtt_config(plain: bool) -> dict[str, Any]:
    listeners: dict[str, Any] = {MTLS: {"type": "external", "bind": "fleetsim-mtls"}}
    if plain:
        listeners[PLAIN] = {"type": "external", "bind": "fleetsim-plain"}
    return {"listeners": listeners, "plugins": {AUTH_PLUGIN: {}, TOPIC_PLUGIN: {}}}


def _listen_error(host: str, port: int, exc: OSError) -> BrokerError:
    if exc.errno == errno.EADDRINUSE:
        return BrokerError(f"port {host}:{port} is in use",
                           "stop what listens there or choose another --port (0 picks a free one)")
    return BrokerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "check --host and --port")


class EmbeddedBroker:
    """amqtt with required client certificates, CRL hot reload and broker-side counters (asyncio API)."""

    kind = "embedded"

    def __init__(self, pki_dir: Path | str, options: BrokerOptions | None = None, *,
                 stats_port: int | None = None, crl_poll_s: float = 0.2,
                 trust_domain: str | None = None) -> None:
        self.layout = Layout(Path(pki_dir))
        self.options = options or BrokerOptions()
        self.host = self.options.host
        self.port = self.options.port
        self.plain_port: int | None = None
        self.stats_port: int | None = None
        self._want_stats_port = stats_port
        self._crl_poll_s = crl_poll_s
        self._trust_domain = trust_domain  # None: the PKI's own, read at start
        self.metrics = BrokerMetrics()
        self._context = None  # type: Any  # the server-only baseline's; with certificates, self.crl's
        self.crl: CrlKeeper | None = None
        self._registration: Path | None = None
        self._token = secrets.token_hex(16)  # in its registration, its reload URL and that URL's answers (notify)
        self._passwords: PasswordFile | None = None
        self._rules: CertRules | None = None
        self._warned: set[tuple[str, str]] = set()
        self._amqtt: ConformingBroker | None = None
        self._table = SubscriptionTable()
        self._clock: LoopClock | None = None  # made at start, on the broker's loop
        self._servers: list[asyncio.Server] = []
        self._live: dict[TlsConnection, Peer] = {}
        self._all: set[TlsConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_client: dict[str, Holder] = {}  # client id -> the connection amqtt serves it on
        self._listener_of: dict[str, str] = {}  # client id -> the listener its amqtt session was made on
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the PKI, start amqtt, listen. Raises BrokerError (one line) on any bad configuration."""
        opts = self.options
        tls_context.check_layout(self.layout, require_certificate=opts.require_certificate)
        if (problem := check_patterns(opts.device_topics)) is not None:
            raise BrokerError(problem, 'use patterns like "fleet/+/%m/%u/#" (%u: the device id, %m: its model)')
        if self._trust_domain is None:
            self._trust_domain = tls_context.trust_domain(self.layout)
        if opts.require_certificate:
            issuing = tls_context.issuing_ca(self.layout)
            self._rules = CertRules(issuing, self._trust_domain)
            self.crl = CrlKeeper(self.layout, opts, issuing, renew=opts.renew_crl)
            await asyncio.get_running_loop().run_in_executor(None, self.crl.load_initial)
        else:
            self._context = tls_context.build_context(self.layout, opts)
        self._passwords = PasswordFile.load(Path(opts.password_file)) if opts.password_file else None
        self._clock = LoopClock(asyncio.get_running_loop().time)
        self._clock.start(asyncio.get_running_loop())
        self._amqtt = ConformingBroker(
            _amqtt_config(opts.plain_port is not None), on_queue_full=self._queue_full, on_unreleased=self._unreleased,
            bounds=QueueBounds(opts.max_inflight_messages, opts.max_queued_messages, opts.max_session_queue_bytes),
            limits=Limits.of(opts))
        self._amqtt.unsent_of, self._amqtt.on_refused = self._unsent_of, self._retained_refused
        self._amqtt.room = opts.max_queued_bytes // 2
        self._table = subscriptions.install(self._amqtt)
        await self._amqtt.start()
        try:
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        if self.crl is not None:
            self._register()
            if self._crl_poll_s > 0:
                self._watcher = asyncio.create_task(self._watch_crl())

    def _register(self) -> None:
        """Be told of every CRL the PKI writes (fleetsim.pki.notify), then catch one written meanwhile."""
        if self.stats_port is not None:
            try:
                self._registration = notify.register(
                    self.layout, f"http://127.0.0.1:{self.stats_port}/reload-crl/{self._token}", self._token)
            except OSError as exc:
                log.info("cannot register in %s (%s): new CRLs apply within %g s (polling)",
                         self.layout.brokers_dir, exc.strerror or exc, self._crl_poll_s)
        if self.crl is not None and self.crl.changed_on_disk():
            self.reload_crl()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        self.port = await self._listen_on(opts.host, opts.port, loop.create_server(
            self._new_connection, opts.host, opts.port, reuse_address=True, backlog=BACKLOG))
        if opts.plain_port is not None:
            self.plain_port = await self._listen_on(opts.host, opts.plain_port, asyncio.start_server(
                self._plain_connected, opts.host, opts.plain_port, reuse_address=True, backlog=BACKLOG))
        if self._want_stats_port is not None:
            self.stats_port = await self._listen_on("127.0.0.1", self._want_stats_port, start_json_server(
                "127.0.0.1", self._want_stats_port,
                {("GET", "/stats"): self.stats, ("POST", "/reload-crl"): self._reload_and_stats,
                 ("POST", f"/reload-crl/{self._token}"): self._notified}))

    async def _listen_on(self, host: str, port: int, starting: Awaitable[asyncio.Server]) -> int:
        """Await a listener, keep it for stop(), return its port; a busy port is one clear line."""
        try:
            server = await starting
        except OSError as exc:
            raise _listen_error(host, port, exc) from None
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Stop listening, end every session, shut amqtt down. Safe to call twice."""
        notify.unregister(self._registration)
        self._registration = None
        if self._clock is not None:
            self._clock.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self._all):
            conn.close()
        if self._amqtt is not None:
            amqtt, self._amqtt = self._amqtt, None
            with contextlib.suppress(Exception):
                await amqtt.shutdown()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)

    # --- CRL ---------------------------------------------------------------------------------------------------
    def reload_crl(self) -> None:
        """Judge crl.pem and, if it may replace the CRL in force, serve the next handshakes from it and drop the
        live sessions it revokes (drop_revoked). Returns once that is done: what a notified revoke waits for."""
        if self.crl is not None and self.crl.reload() and self.options.drop_revoked:
            self._drop_revoked()

    def _drop_revoked(self) -> None:
        for conn, peer in list(self._live.items()):
            if peer.identity is not None and peer.identity.serial in self._revoked():
                log.warning("dropping live session of revoked certificate serial %x (%s)",
                            peer.identity.serial, peer.name)
                self.metrics.dropped_revoked += 1
                del self._live[conn]
                conn.close()

    def _reload_and_stats(self) -> dict[str, Any]:
        self.reload_crl()
        return self.stats()

    def _notified(self) -> dict[str, Any]:
        """The PKI's notify, at this broker's registered URL: the answer names the registration it answers for."""
        return {**self._reload_and_stats(), "registration": self._token}

    async def _watch_crl(self) -> None:
        """A CRL written without notifying this broker applies within ``crl_poll_s``; renewal and expiry warnings
        are checked at the same pace."""
        assert self.crl is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._crl_poll_s)
            if self.crl.changed_on_disk():
                self.reload_crl()
            if self.crl.renewal_wanted():
                await loop.run_in_executor(None, self.crl.renew)  # notifies this broker too: keep the loop free
                if self.crl.changed_on_disk():
                    self.reload_crl()

    def _revoked(self) -> frozenset[int]:
        return self.crl.revoked if self.crl is not None else frozenset()

    def _context_now(self) -> Any:
        return self.crl.context if self.crl is not None else self._context

    # --- connections -------------------------------------------------------------------------------------------
    def _new_connection(self) -> TlsConnection:
        conn = TlsConnection(self._context_now, self)
        self._all.add(conn)
        return conn

    def established(self, conn: TlsConnection) -> None:
        """TlsHooks: a handshake completed; hand the connection to amqtt in its own task."""
        if not self.options.session_tickets and conn.sslobj is not None and conn.sslobj.session_reused:
            # Tickets off means no resumption at all. TLS 1.2 session ids still resume (Python's ssl has no
            # switch for OpenSSL's server session cache): close such a session, the device's next try is full.
            self.metrics.reject(RESUMPTION_OFF)
            conn.close()
            return
        self.metrics.accepted += 1
        if conn.handshake_ms is not None:
            self.metrics.handshake(conn.handshake_ms)
        peer = self._peer(conn)
        self._live[conn] = peer
        self._spawn(self._serve(TlsReader(conn), TlsWriter(conn), peer, conn.close, conn.unsent))

    def _peer(self, conn: TlsConnection) -> Peer:
        address = conn.peername[0] if conn.peername else "?"
        if conn.peer_der is None or self._rules is None:
            return Peer(MTLS, address=address)
        try:
            identity = self._rules.judge(conn.peer_der)
        except Refused as exc:
            return Peer(MTLS, refusal=exc.reason, address=address, grant=NOTHING)
        grant = grant_for(identity.role, identity.name, self.options.device_topics, identity.model)
        return Peer(MTLS, identity, address=address, grant=grant)

    def rejected(self, conn: TlsConnection, reason: str) -> None:
        """TlsHooks: a handshake failed; the alert has been sent."""
        self.metrics.reject(reason)
        log.info("TLS handshake from %s refused: %s", conn.peername, reason)

    def closed(self, conn: TlsConnection) -> None:
        self._all.discard(conn)
        self._live.pop(conn, None)

    async def _plain_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        set_nodelay(writer.transport)
        self.metrics.accepted += 1
        peer = Peer(PLAIN, address=str(writer.get_extra_info("peername", ("?",))[0]))
        await self._serve(StreamReaderAdapter(reader), StreamWriterAdapter(writer), peer, writer.close,
                          writer.transport.get_write_buffer_size)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: ReaderAdapter, writer: WriterAdapter, peer: Peer, abort: Callable[[], None],
                     unsent: Callable[[], int]) -> None:
        """Read and judge the whole CONNECT, then let amqtt run the session; amqtt never sees a packet this front
        has not read and checked (``stream``). The CONNECT timeout runs until amqtt's CONNACK."""
        packets = PacketReader(reader, self.options.max_packet_size, partial(self._violation, peer, abort),
                               self._clock.available if self._clock is not None else None)
        timer = asyncio.get_running_loop().call_later(self.options.connect_timeout_s, self._connect_timed_out,
                                                      peer, abort)
        try:
            connect = await packets.first_connect()
            verdict = self._admit(peer, connect)
            if not verdict.ok:
                writer.write(connack(verdict.code))
                await writer.drain()
                return
            # copied into the tasks amqtt's plugins run in
            CURRENT_GATE.set(partial(self._gate_for_amqtt, peer, connect))
            CURRENT_TOPICS.set(partial(self._topic_check, peer, connect.client_id))
            if not self._may_claim(peer, connect.client_id):
                writer.write(connack(IDENTIFIER_REJECTED))
                await writer.drain()
                return
            holder = await self._take_over(connect.client_id, peer, abort, unsent)
            await self._claim(peer, connect.client_id)
            try:
                with self._keepalive(packets, connect.keepalive, peer, abort):
                    if self._amqtt is not None:
                        packets.hold_while(partial(self._backlog, connect.client_id),
                                           self.options.max_queued_bytes // self.options.max_packet_size)
                        bounded = BoundedWriter(ConnackWatch(writer, timer.cancel), unsent,
                                                self.options.max_queued_bytes, on_discard=self._discarded,
                                                on_drop=partial(self._slow_consumer, peer, abort))
                        await self._amqtt.external_connected(packets, bounded, peer.listener)
            finally:
                self._release(connect.client_id, holder)
        except Violation as exc:
            self._violation(peer, None, exc)
            if exc.connack is not None:
                writer.write(connack(exc.connack))
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("session from %s failed", peer.address)
        finally:
            timer.cancel()
            packets.close()
            await writer.close()

    async def _take_over(self, client_id: str, peer: Peer, abort: Callable[[], None],
                         unsent: Callable[[], int]) -> Holder:
        """3.1.4-2: a client id already connected loses its connection to this one (admitted for that id, so on the
        certificate listener the same certificate: a device reconnecting, or a clone). The old connection is closed
        and its session wound down in amqtt (its will published, a persistent session left to resume) before amqtt
        reads this CONNECT. Counted: two live copies of one identity are a security event."""
        holder = Holder(peer, abort, unsent)
        old = self._by_client.get(client_id)
        self._by_client[client_id] = holder
        if old is not None:
            self.metrics.takeovers += 1
            log.warning("%s connected again from %s: its connection from %s is closed (session takeover; "
                        "a cloned identity?)", client_id, peer.address, old.peer.address)
            old.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(old.done), TAKEOVER_WAIT_S)
        return holder

    def _release(self, client_id: str, holder: Holder) -> None:
        holder.done.set_result(None)
        if self._by_client.get(client_id) is holder:
            del self._by_client[client_id]
            if self._amqtt is None or client_id not in self._amqtt.sessions:  # a clean session ended with it
                self._listener_of.pop(client_id, None)

    def _may_claim(self, peer: Peer, client_id: str) -> bool:
        """Two listeners of different trust share amqtt's one namespace of client ids. A client of the plain
        (certificate-less) baseline may not take over or resume a session made on the certificate listener: it
        could cut a device off, or read what was queued for it. Refused with CONNACK 2, counted."""
        if peer.listener != PLAIN or not client_id or self._listener_of.get(client_id) != MTLS:
            return True
        if self._amqtt is None or client_id not in self._amqtt.sessions:
            return True
        self.metrics.reject(CLIENT_ID_HELD)
        log.warning("CONNECT on the plain listener from %s as %r refused: %s", peer.address, client_id,
                    CLIENT_ID_HELD)
        return False

    async def _claim(self, peer: Peer, client_id: str) -> None:
        """The session this client id resumes is the listener's own: a device (certificate listener) that finds a
        session the plain listener made starts afresh, rather than inherit subscriptions an unauthenticated client
        planted in it."""
        if not client_id:
            return
        made_on = self._listener_of.get(client_id)
        if made_on is not None and made_on != peer.listener and self._amqtt is not None:
            await self._amqtt._delete_session(client_id)  # fenced by tests/test_amqtt_contract.py
        self._listener_of[client_id] = peer.listener

    @contextlib.contextmanager
    def _keepalive(self, packets: PacketReader, keepalive: int, peer: Peer,
                   abort: Callable[[], None]) -> Iterator[None]:
        """3.1.2-24: no packet for 1.5 x the keepalive the client asked for, and the connection is closed as if
        the network had failed (amqtt then publishes the will). amqtt's own read timeout does nothing. Silence is
        measured on the time the loop could run (``loop_clock``): a stall of the broker is not the device's."""
        if keepalive <= 0:
            yield
            return
        loop, limit = asyncio.get_running_loop(), 1.5 * keepalive
        clock = self._clock.available if self._clock is not None else loop.time
        handle: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal handle
            silent = clock() - packets.last_packet_at
            if silent < limit:
                handle = loop.call_later(limit - silent, check)
                return
            log.info("%s (%s) sent nothing for %g s (1.5 x its keepalive): closed", peer.address, peer.name, limit)
            abort()

        handle = loop.call_later(limit, check)
        try:
            yield
        finally:
            handle.cancel()

    def _topic_check(self, peer: Peer, client_id: str, publish: bool, topic: str) -> bool:
        """The topic rules, then (for a SUBSCRIBE) the per-client-id limit on subscriptions."""
        if not self._topic_allowed(peer, publish, topic):
            return False
        if publish or self._table.held(client_id) < self.options.max_subscriptions or \
                self._table.holds(client_id, topic):
            return True
        self.metrics.subscriptions_refused += 1
        if len(self._warned) < WARNED_LIMIT and (peer.name, "subscription limit") not in self._warned:
            self._warned.add((peer.name, "subscription limit"))
            log.warning("SUBSCRIBE from %s (%s) to %r refused: it holds %d subscriptions, the limit (further ones "
                        "are only counted)", peer.address, peer.name, topic, self.options.max_subscriptions)
        return False

    def _topic_allowed(self, peer: Peer, publish: bool, topic: str) -> bool:
        """What the topic plugin asks for this connection; a refusal is counted and logged."""
        if (publish and peer.grant.may_publish(topic)) or (not publish and peer.grant.may_subscribe(topic)):
            return True
        reason = "publish not authorized" if publish else "subscribe not authorized"
        self.metrics.reject(reason)
        if len(self._warned) < WARNED_LIMIT and (peer.name, reason) not in self._warned:  # once per identity
            self._warned.add((peer.name, reason))
            log.warning("%s from %s (%s) on %r (further ones are only counted)", reason, peer.address, peer.name,
                        topic)
        return False

    def _backlog(self, client_id: str) -> int:
        """PUBLISHes amqtt has read from this client id and not yet routed (its session's inbound queue)."""
        entry = self._amqtt.sessions.get(client_id) if self._amqtt is not None else None
        return entry[0].delivered_message_queue.qsize() if entry is not None else 0

    def _unsent_of(self, client_id: str) -> int:
        holder = self._by_client.get(client_id)
        return holder.unsent() if holder is not None else 0

    def _retained_refused(self, client_id: str, topic: str, reason: str) -> None:
        """A retained PUBLISH past the retained limits (``retained``): delivered, not kept; counted, logged once."""
        self.metrics.retained_refused += 1
        if len(self._warned) < WARNED_LIMIT and (client_id, "retained") not in self._warned:
            self._warned.add((client_id, "retained"))
            log.warning("retained message from %s on %r not kept: %s (further ones are only counted)", client_id,
                        topic, reason)

    def _discarded(self) -> None:
        self.metrics.qos0_discarded += 1

    def _queue_full(self) -> None:
        """A QoS 1/2 message not queued: its session's outbox was full (session_queue). Counted, not logged: a
        monitor offline on a busy fleet drops thousands."""
        self.metrics.queued_dropped += 1

    def _unreleased(self) -> None:
        """A connection held max_inflight_messages QoS 2 messages without PUBREL and sent another: closed."""
        self.metrics.reject(UNRELEASED)
        log.warning("closing a connection: %s (over %d)", UNRELEASED, self.options.max_inflight_messages)

    def _slow_consumer(self, peer: Peer, abort: Callable[[], None]) -> None:
        """A packet other than QoS 0 found max_queued_bytes unsent before it (see outbound.py): closed."""
        self.metrics.slow_consumers_dropped += 1
        log.warning("closing the connection from %s (%s): slow consumer, over %d bytes unsent", peer.address,
                    peer.name, self.options.max_queued_bytes)
        abort()

    def _violation(self, peer: Peer, abort: Callable[[], None] | None, exc: Violation) -> None:
        """A packet this front refuses: counted by reason, logged with who sent it, the connection closed."""
        self.metrics.reject(exc.reason)
        log.warning("closing the connection from %s (%s): %s", peer.address, peer.name, exc.reason)
        if abort is not None:
            abort()

    def _connect_timed_out(self, peer: Peer, abort: Callable[[], None]) -> None:
        self.metrics.reject("connect timeout")
        log.info("no accepted CONNECT from %s within %g s: closed", peer.address, self.options.connect_timeout_s)
        abort()

    def _admit(self, peer: Peer, connect: Connect) -> Verdict:
        verdict = admit(peer, connect, certificates=self.options.require_certificate, revoked=self._revoked(),
                        passwords=self._passwords)
        if verdict.ok:
            self.metrics.authorized += 1
        else:
            self.metrics.reject(verdict.reason)
            log.warning("CONNECT from %s as %r refused: %s (certificate names %s)", peer.address,
                        connect.client_id, verdict.reason, peer.name)
        return verdict

    def _gate_for_amqtt(self, peer: Peer, admitted: Connect, connect: Connect) -> Verdict:
        """What amqtt's auth plugin asks. The CONNECT admitted above, as amqtt parsed it, passes without a second
        round of the rule (a password check is a PBKDF2); one amqtt reads differently goes through the rule."""
        if connect.credentials == admitted.credentials:
            return Verdict(True)
        return admit(peer, connect, certificates=self.options.require_certificate, revoked=self._revoked(),
                     passwords=self._passwords)

    # --- counters ------------------------------------------------------------------------------------------------
    def cpu_seconds(self) -> float | None:
        cpu = os.times()
        return cpu.user + cpu.system

    def stats(self) -> dict[str, Any]:
        """Broker-side counters as JSON-able data (see the module docstring for the keys)."""
        snapshot = self.metrics.snapshot(current_connections=len(self._live))
        snapshot["crl"] = self.crl.stats() if self.crl is not None else None
        store = self._amqtt.retained_store if self._amqtt is not None else None
        snapshot["retained"] = {"topics": len(store), "bytes": store.bytes} if store is not None else None
        snapshot.update({
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "plain_port": self.plain_port,
            "stats_port": self.stats_port,
            "tls_version": self.options.tls_version,
            "session_tickets": self.options.session_tickets,
            "require_certificate": self.options.require_certificate,
            "drop_revoked": self.options.drop_revoked,
            "max_packet_size": self.options.max_packet_size,
            "connect_timeout_s": self.options.connect_timeout_s,
            "max_queued_bytes": self.options.max_queued_bytes,
            "max_subscriptions": self.options.max_subscriptions,
            "max_inflight_messages": self.options.max_inflight_messages,
            "max_queued_messages": self.options.max_queued_messages,
            "max_session_queue_bytes": self.options.max_session_queue_bytes,
            "max_retained_per_client": self.options.max_retained_per_client,
            "max_retained_bytes": self.options.max_retained_bytes,
        })
        return snapshot
