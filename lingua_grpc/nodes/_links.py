"""NodeLinks: the node streams this instance holds, by node id. It is how a job attempt reaches a node (the
dispatcher's JobTransport); the hub adds and removes links as streams register and end."""

from __future__ import annotations

from collections.abc import Iterator

from lingua_grpc.jobs import Assignment
from lingua_grpc.nodes._link import CancelCommand, NodeLink


class NodeLinks:
    def __init__(self) -> None:
        self._by_node: dict[str, NodeLink] = {}

    def get(self, node_id: str) -> NodeLink | None:
        return self._by_node.get(node_id)

    def put(self, link: NodeLink) -> NodeLink | None:
        """Makes `link` the node's stream; returns the one it replaces."""
        previous = self._by_node.get(link.node_id)
        self._by_node[link.node_id] = link
        return previous

    def remove(self, link: NodeLink) -> bool:
        """Removes `link` if it is still the node's stream (a newer one stays)."""
        if self._by_node.get(link.node_id) is link:
            del self._by_node[link.node_id]
            return True
        return False

    def __len__(self) -> int:
        return len(self._by_node)

    def __iter__(self) -> Iterator[NodeLink]:
        return iter(list(self._by_node.values()))

    # JobTransport
    def deliver(self, node_id: str, assignment: Assignment) -> str | None:
        link = self._by_node.get(node_id)
        return link.connection_id if link is not None and link.send(assignment) else None

    def cancel(self, node_id: str, job_id: str, attempt: int, reason: str) -> None:
        link = self._by_node.get(node_id)
        if link is not None:
            link.send(CancelCommand(job_id, attempt, reason))
