"""Session options: the contract's bounds, and resolving a client's request against server defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from lingua_grpc.errors import InvalidArgument

# The ranges documented on SessionOptions in proto/lingua/v1/session.proto; part of the public contract.
BOUNDS: dict[str, tuple[int, int]] = {
    "pause_ms": (100, 10_000),
    "hangover_ms": (0, 5_000),
    "max_utterance_ms": (1_000, 60_000),
    "gap_timeout_ms": (1_000, 120_000),
    "silence_threshold_dbfs": (-90, 0),
    "queue_timeout_ms": (100, 120_000),
}
SAMPLE_RATES_HZ = (8_000, 48_000)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    pause_ms: int
    hangover_ms: int
    max_utterance_ms: int
    gap_timeout_ms: int
    tts_enabled: bool
    silence_threshold_dbfs: int
    queue_timeout_ms: int
    # The client waits for room (session.proto, flow control): while the session's outstanding window is
    # full, its audio is not read rather than its next utterance skipped SESSION_BACKLOG.
    wait_for_room: bool = False

    def resolve(self, requested: dict[str, int | bool]) -> SessionOptions:
        """These options (the defaults) overridden by what the client set, each checked against BOUNDS."""
        known = {f.name for f in fields(self)}
        for name, value in requested.items():
            if name not in known:
                raise InvalidArgument(f"options.{name} is not a session option")
            if name in BOUNDS:
                low, high = BOUNDS[name]
                if not low <= int(value) <= high:
                    raise InvalidArgument(f"options.{name} must be {low} to {high}, got {value}")
        return replace(self, **requested)  # type: ignore[arg-type]

    def check_defaults(self) -> None:
        """Server defaults must themselves be valid options."""
        self.resolve({name: getattr(self, name) for name in BOUNDS})
