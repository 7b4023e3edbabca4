"""amqtt's side of the embedded broker's rules: plugins that ask the front's decisions, never make their own.

The connection's facts travel in context variables set by the task that hands the connection to amqtt (asyncio
copies the context into the tasks amqtt's plugin manager starts), never through ``session.ssl_object``: on a
reconnect with a persistent session amqtt keeps the previous connection's TLS object in the session.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleetsim.broker.embedded.auth import Verdict
from fleetsim.broker.embedded.mqtt_wire import Connect

# The gate for the connection being authenticated: (client id, username, password) -> Verdict.
Gate = Callable[[Connect], Verdict]
CURRENT_GATE: ContextVar[Gate] = ContextVar("fleetsim_gate")
# The topic check of the connection whose packet amqtt handles: (publish?, topic or filter) -> allowed.
TopicCheck = Callable[[bool, str], bool]
CURRENT_TOPICS: ContextVar[TopicCheck] = ContextVar("fleetsim_topics")


class FleetsimAuthPlugin(BaseAuthPlugin):
    """amqtt auth plugin: asks the gate of the connection being authenticated; no gate, no entry."""

    async def authenticate(self, *, session: Session) -> bool | None:
        gate = CURRENT_GATE.get(None)
        if gate is None:
            return False
        password = session.password
        secret = password.encode() if isinstance(password, str) else password
        return gate(Connect(session.client_id or "", session.username, secret)).ok


class FleetsimTopicPlugin(BaseTopicPlugin):
    """amqtt topic plugin: asks the topic check of the connection whose SUBSCRIBE or PUBLISH amqtt handles.

    Deliveries (RECEIVE) run in amqtt's broadcast task, outside any connection's context: they pass, since
    every subscription was judged when it was made. A SUBSCRIBE or PUBLISH without a check is refused.
    """

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if action == Action.RECEIVE:
            return True
        check = CURRENT_TOPICS.get(None)
        if check is None or topic is None:
            return False
        return check(action == Action.PUBLISH, topic)
