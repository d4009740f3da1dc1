"""An in-process Flower ``Grid``: the ServerApp's messages go straight to a ClientApp, no Ray.

Flower 1.32's simulation engine only has a Ray backend, which takes ~10 s to start and stop. The
``Grid`` is Flower's own seam between a ServerApp and the nodes, so this one
delivers each message to the real ``ClientApp`` (with its mods) in the calling thread, with one
``Context`` per node kept across rounds, as a SuperNode would. A ClientApp that raises (a dropped-out
client, in tests) answers with an error message, as Flower's engines do. Everything above it
(workflows, strategies, SecAgg+) is Flower's code, unchanged. ``dpledger fl`` runs on Flower's
simulation engine by default (:mod:`dpledger.federated.engine`); this grid is ``--engine
inprocess``: no Ray, one process, for fast tests and small machines.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["LocalGrid"]


def _wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class LocalGrid(Grid):
    """Nodes 1..``nodes``, each running ``client_app`` with ``node_config`` partition-id i - 1."""

    def __init__(self, client_app: ClientApp, *, nodes: int, run_id: int = 1) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node: Context(
                run_id=run_id,
                node_id=node,
                node_config={"partition-id": node - 1, "num-partitions": nodes},
                state=RecordDict(),
                run_config={},
            )
            for node in range(1, nodes + 1)
        }
        self._replies: dict[str, Message] = {}
        self.delivered: list[Message] = []  # every message sent to a node (tests read it)

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_run_id"] = self._run.run_id
            message.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            self.delivered.append(message)
            node = message.metadata.dst_node_id
            # Through Flower's wire format both ways, as between a SuperLink and a SuperNode:
            # the node gets its own copy (SecAgg+'s mod edits what it receives).
            self._replies[message_id] = _wire(self._call(_wire(message), self._contexts[node]))
            ids.append(message_id)
        return ids

    def _call(self, message: Message, context: Context) -> Message:
        """The node's reply; a ClientApp that raises answers with an error, as a SuperNode does."""
        try:
            return self._client_app(message, context)
        except Exception as error:
            reason = f"{type(error)}:<'{error}'>"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
            )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))
