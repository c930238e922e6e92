"""What any caller, admitted or not, can make the process parse: a bound per service, checked on the raw
bytes before protobuf sees them.

gRPC's own receive limit (`max_message_bytes`, 8 MiB) is the same for every method, and a message's cost is
not its size: protobuf parses a 1 MB run of tiny submessages or map entries into hundreds of thousands of
objects (a 5 MB `labels` map took 0.7 s on this machine, 100,000 translation pairs 6 ms to parse and 400 ms
more to convert), all on the event loop. So each service's requests get a byte bound (what its largest
legitimate message needs) and a field bound (how many fields its largest legitimate message holds, nested
ones included), counted by a walk of the wire format that follows the message's descriptor into its
submessages and stops at the bound: it costs at most a few microseconds per field it counts, and skips
strings and bytes in one step. Over either bound the call ends RESOURCE_EXHAUSTED before any parsing.

A call the gate refuses (no credential, wrong role) still has its first message read (`refusal_read_ms`,
grpc/grpc#36066); that read is not parsed at all (`unparsed`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from lingua_grpc.errors import ResourceExhausted

# Messages this small are parsed without a walk: their parse is bounded by their size (a few hundred
# microseconds at most, map entries included) and most audio chunks and heartbeats are under it.
WALK_OVER_BYTES = 4096
_PACKED_BYTES_PER_FIELD = 16  # a packed run of scalars parses at a few ns a byte: one field per 16 bytes

_UNPARSED: contextvars.ContextVar[bool] = contextvars.ContextVar("lingua_unparsed", default=False)


class MessageTooLarge(ResourceExhausted):
    """A request over its service's byte or field bound, refused before it was parsed."""


@contextlib.contextmanager
def unparsed() -> Iterator[None]:
    """Messages read in this block (by this task) are received and dropped, not parsed: a refused
    caller's first message costs its bytes' arrival only."""
    token = _UNPARSED.set(True)
    try:
        yield
    finally:
        _UNPARSED.reset(token)


@dataclass(frozen=True, slots=True)
class Bound:
    """The largest request a service accepts: `max_bytes` serialized, `max_fields` fields in all."""

    max_bytes: int
    max_fields: int


@dataclass(frozen=True, slots=True)
class MessageBounds:
    """A `Bound` per service (`lingua.v1.NodeService`); services not named are unbounded here."""

    by_service: Mapping[str, Bound]

    @classmethod
    def for_limits(
        cls,
        *,
        max_chunk_bytes: int,
        max_result_bytes: int,
        max_pairs: int,
        max_languages: int,
        max_labels: int,
        max_gpus: int,
        max_field_bytes: int,
        max_node_concurrency: int,
    ) -> MessageBounds:
        """Bounds that every message the settings accept fits, with room to spare: a node's largest
        registration or result, a client's largest chunk or start, an operator's request."""
        text = max_field_bytes + 8  # a string field: tag, length, bytes
        registration_fields = (
            max_pairs * 3  # a pair and its two tags
            + max_languages * 2  # ASR and TTS languages
            + max_labels * 3  # a map entry, its key and value
            + max_gpus * 5
            + max_node_concurrency * 3  # running jobs: the entry, its job id and attempt
            + 64
        )
        registration_bytes = (
            max_pairs * (2 * text + 4)
            + max_languages * 2 * text
            + max_labels * (2 * text + 4)
            + max_gpus * (2 * text + 32)
            + max_node_concurrency * (text + 16)
            + 16 * text
        )
        return cls(
            {
                "lingua.v1.NodeService": Bound(
                    max(registration_bytes, max_result_bytes) + 65536, registration_fields
                ),
                "lingua.v1.SessionService": Bound(max_chunk_bytes + 65536, 256),
                "lingua.v1.RegistryService": Bound(65536, 256),
            }
        )

    def deserializer(
        self, method: str, parse: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        """`parse` (a generated `FromString`) behind `method`'s service bound; `parse` itself for a service
        with no bound."""
        bound = self.by_service.get(method.lstrip("/").partition("/")[0])
        if bound is None or parse is None:
            return parse
        descriptor: Descriptor | None = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        shape = shape_of(descriptor) if descriptor is not None else None

        def bounded(data: bytes) -> Any:
            if _UNPARSED.get():
                return None
            if len(data) > bound.max_bytes:
                raise MessageTooLarge(
                    f"a {method} message of {len(data)} bytes: more than any valid one (at most {bound.max_bytes})"
                )
            if shape is not None and len(data) > WALK_OVER_BYTES:
                fields = count_fields(data, shape, bound.max_fields)
                if fields > bound.max_fields:
                    raise MessageTooLarge(
                        f"a {method} message of over {bound.max_fields} fields: more than any valid one"
                    )
            return parse(data)

        return bounded


_PACKED = object()  # a repeated scalar field: length-delimited, it is a packed run
# A message's shape: field number -> its submessage's shape, _PACKED for a repeated scalar, None for the rest.
_Shape = dict[int, Any]
_SHAPES: dict[str, _Shape] = {}
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


def shape_of(descriptor: Descriptor) -> _Shape:
    """The shape of `descriptor`'s messages, built once (recursive types share theirs)."""
    known = _SHAPES.get(descriptor.full_name)
    if known is None:
        known = _SHAPES[descriptor.full_name] = {}
        for f in descriptor.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None:
                known[f.number] = shape_of(f.message_type)
            elif f.is_repeated and f.type not in _LENGTH_DELIMITED:
                known[f.number] = _PACKED
            else:
                known[f.number] = None
    return known


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def count_fields(data: bytes, shape: _Shape, limit: int) -> int:
    """How many fields `data` (a serialized message of `shape`) holds, nested and unknown ones included
    (a field of a packed run counts one per 16 bytes); counting stops once over `limit`.
    A message that is not well-formed counts 0: the parse that follows refuses it."""
    count = 0
    stack: list[tuple[int, int, _Shape]] = [(0, len(data), shape)]
    try:
        while stack:
            pos, end, children = stack.pop()
            while pos < end:
                count += 1
                if count > limit:
                    return count
                key = data[pos]  # one byte for fields 1 to 15, the common case, decoded inline
                if key < 0x80:
                    pos += 1
                else:
                    key, pos = _varint(data, pos, end)
                wire = key & 7
                if wire == 2:
                    if pos < end and data[pos] < 0x80:
                        length, pos = data[pos], pos + 1
                    else:
                        length, pos = _varint(data, pos, end)
                    child = children.get(key >> 3)
                    if child is _PACKED:
                        count += length // _PACKED_BYTES_PER_FIELD
                    elif child is not None:
                        stack.append((pos, pos + length, child))
                    pos += length
                elif wire == 0:
                    _, pos = _varint(data, pos, end)
                elif wire == 1:
                    pos += 8
                elif wire == 5:
                    pos += 4
                else:  # groups: in no message of this API
                    raise _Malformed
                if pos > end:
                    raise _Malformed
    except _Malformed:
        return 0
    return count
