"""amqtt's side of the embedded broker's rules: plugins that ask the front's decisions, never make their own.

The connection's facts travel in context variables set by the task that hands the connection to amqtt (asyncio
copies the context into the tasks amqtt's plugin manager starts), never through ``session.ssl_object``: on a
reconnect with a persistent session amqtt keeps the previous connection's TLS object in the session.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from fleetsim.broker.embedded_auth import Verdict
from fleetsim.broker.mqtt_wire import Connect

# The gate for the connection being authenticated: (client id, username, password) -> Verdict.
Gate = Callable[[Connect], Verdict]
CURRENT_GATE: ContextVar[Gate] = ContextVar("fleetsim_gate")


class FleetsimAuthPlugin(BaseAuthPlugin):
    """amqtt auth plugin: asks the gate of the connection being authenticated; no gate, no entry."""

    async def authenticate(self, *, session: Session) -> bool | None:
        gate = CURRENT_GATE.get(None)
        if gate is None:
            return False
        password = session.password
        secret = password.encode() if isinstance(password, str) else password
        return gate(Connect(session.client_id or "", session.username, secret)).ok
