"""Lingua control plane: the gRPC scheduler for live speech translation."""

__version__ = "0.1.0"
