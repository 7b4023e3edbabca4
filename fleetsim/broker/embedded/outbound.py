"""What the embedded broker queues for one connection, bounded by bytes: a device that never reads its socket cannot
grow the broker's memory.

Why here and not in amqtt: amqtt writes each outgoing packet in one ``write`` and then awaits ``drain``; while a
consumer does not read, ``drain`` blocks and every further delivery waits in a task of its own holding its
payload (60 KB QoS 0 messages to a device that subscribed to itself grew the broker ~1 MB per MB sent, and kept
it). ``BoundedWriter`` is amqtt's writer instead: ``drain`` never blocks (no task piles up behind a stalled
socket), and each packet is judged against what the connection's transport still holds unsent:

* a QoS 0 PUBLISH that would take the queue past ``limit`` is discarded, counted: what Mosquitto does with QoS 0
  messages for a client whose queue is full (``max_queued_messages``, 1000 by default) — QoS 0 promises nothing
  and the device stays connected;
* any other packet past ``limit`` (a QoS 1/2 PUBLISH, an acknowledgement) closes the connection, counted as a
  slow consumer dropped: discarding those would break a promise the device was given without telling it, where a
  closed connection tells it (a persistent session keeps its QoS 1/2 messages for the next connection).

QoS 1/2 deliveries do not come here unpaced: a session's queued messages (``session_queue``) are sent only while
what the connection holds unsent stays under half the limit (``paced``), so a device returning to more than the limit
of queued messages gets them all in one connection, and the other half is left for what is not paced
(acknowledgements, QoS 0).

The limit is ``BrokerOptions.max_queued_bytes`` (default 1 MiB, see ``handle``). Pure decisions (``verdict``,
``paced``) apart from the adapter, so the rules are unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from amqtt.adapters import WriterAdapter

from fleetsim.broker.embedded.stream import WrappedWriter

PUBLISH = 3


class Verdict(Enum):
    WRITE = "write"
    DISCARD = "discard"  # a QoS 0 PUBLISH not sent
    DROP = "drop"  # the connection is closed: a slow consumer


def verdict(packet: bytes | bytearray, queued: int, limit: int) -> Verdict:
    """What to do with one outgoing packet when ``queued`` bytes wait unsent on the connection."""
    if queued + len(packet) <= limit or not packet:
        return Verdict.WRITE
    first = packet[0]
    if first >> 4 == PUBLISH and (first >> 1) & 3 == 0:
        return Verdict.DISCARD
    return Verdict.DROP


def paced(size: int, queued: int, limit: int) -> bool:
    """Whether a paced packet of ``size`` may be written now, with ``queued`` bytes unsent: while it stays within half
    the limit, or alone when nothing waits (a packet larger than half the limit is not held back for ever)."""
    return queued == 0 or queued + size <= limit // 2


class BoundedWriter(WrappedWriter):
    """amqtt's writer for one connection: writes within the bound, never blocks in ``drain`` (module docstring)."""

    def __init__(self, inner: WriterAdapter, queued: Callable[[], int], limit: int, *,
                 on_discard: Callable[[], None], on_drop: Callable[[], None]) -> None:
        super().__init__(inner)
        self._queued = queued
        self._limit = limit
        self._on_discard = on_discard
        self._on_drop: Callable[[], None] | None = on_drop

    def write(self, data: bytes) -> None:
        if self._on_drop is None:
            return  # already dropped: the connection is closing
        match verdict(data, self._queued(), self._limit):
            case Verdict.WRITE:
                self._inner.write(data)
            case Verdict.DISCARD:
                self._on_discard()
            case Verdict.DROP:
                drop, self._on_drop = self._on_drop, None
                drop()

    def has_room(self, size: int) -> bool:
        """Whether a paced packet of ``size`` may be written now (``paced``)."""
        return paced(size, self._queued(), self._limit)

    async def drain(self) -> None:
        """Never waits: the bound in ``write`` replaces back-pressure (a waiting drain is what piled tasks up)."""
