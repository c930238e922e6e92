"""The reference Lingua node agent that GPU hosts run (`lingua-node`)."""

from node_agent.agent import AgentConfig, NodeAgent

__all__ = ["AgentConfig", "NodeAgent"]
