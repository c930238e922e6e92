"""Key layout. Every key an atomic operation touches shares one hash tag, so the scripts run on Redis Cluster.

Registry keys (tag `{registry}`), with the default prefix:
    lingua:v1:{registry}:version        registry version counter
    lingua:v1:{registry}:nodes          set of registered node ids
    lingua:v1:{registry}:node:<id>      node hash: capabilities, state, instance, load, reserved...
    lingua:v1:{registry}:lease:<id>     lease, expires (PX) unless heartbeats renew it
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    prefix: str

    @property
    def _tag(self) -> str:
        return f"{self.prefix}{{registry}}"

    @property
    def version(self) -> str:
        return f"{self._tag}:version"

    @property
    def nodes(self) -> str:
        return f"{self._tag}:nodes"

    def node(self, node_id: str) -> str:
        return f"{self._tag}:node:{node_id}"

    def lease(self, node_id: str) -> str:
        return f"{self._tag}:lease:{node_id}"
