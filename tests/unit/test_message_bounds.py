"""What a caller can make the scheduler parse: each service's byte and field bounds, on the raw bytes."""

from __future__ import annotations

import pytest

from lingua_grpc.pb import common_pb2, node_pb2, session_pb2
from lingua_grpc.security import MessageBounds, MessageTooLarge
from lingua_grpc.security._bounds import count_fields, shape_of, unparsed

BOUNDS = MessageBounds.for_limits(
    max_chunk_bytes=262144,
    max_result_bytes=2 * 65536 + 3145728,
    max_pairs=1024,
    max_languages=256,
    max_labels=32,
    max_gpus=64,
    max_field_bytes=256,
    max_node_concurrency=1024,
)
CONNECT = "/lingua.v1.NodeService/Connect"


def parse_connect(data: bytes) -> node_pb2.ConnectRequest:
    parse = BOUNDS.deserializer(CONNECT, node_pb2.ConnectRequest.FromString)
    assert parse is not None
    message: node_pb2.ConnectRequest = parse(data)
    return message


def registration(**caps: object) -> bytes:
    return node_pb2.ConnectRequest(
        register=node_pb2.Register(node_id="n1", capabilities=common_pb2.NodeCapabilities(**caps))  # type: ignore[arg-type]
    ).SerializeToString()


def test_the_largest_valid_registration_and_result_pass() -> None:
    text = "x" * 256
    largest = registration(
        asr_languages=["en"] * 256,
        tts_languages=["es"] * 256,
        translation_pairs=[common_pb2.LanguagePair(source_language="en", target_language="es")] * 1024,
        labels={f"{i:03d}{text}"[:256]: text for i in range(32)},
        gpus=[common_pb2.Gpu(index=7, name=text, uuid=text, memory_total_bytes=2**40)] * 64,
        max_concurrency=1024,
        agent_version=text,
    )
    assert len(parse_connect(largest).register.capabilities.translation_pairs) == 1024
    result = node_pb2.ConnectRequest(
        job_result=node_pb2.JobResult(
            job_id=text, source_text="s" * 65536, translated_text="t" * 65536, tts_audio=b"\x00" * 3145728
        )
    ).SerializeToString()
    assert len(parse_connect(result).job_result.tts_audio) == 3145728


@pytest.mark.parametrize(
    "hostile",
    [
        {
            "translation_pairs": [common_pb2.LanguagePair(source_language="en", target_language="es")]
            * 100_000
        },
        {"labels": {str(i): "v" for i in range(150_000)}},  # a map: seconds to parse at 8 MB
        {"asr_languages": ["en"] * 200_000},
    ],
    ids=["pairs", "labels", "languages"],
)
def test_a_registration_of_too_many_fields_is_refused_before_parsing(hostile: dict[str, object]) -> None:
    # Refused by the wire walk, which stops at the bound (~7,000 fields: about 2 ms here; speed is the
    # benchmark's to measure, scripts/hostile_admission.py, not a test's), never by protobuf's parse.
    with pytest.raises(MessageTooLarge, match="fields: more than any valid one"):
        parse_connect(registration(**hostile))


def test_a_message_over_the_byte_bound_is_refused_unread() -> None:
    with pytest.raises(MessageTooLarge, match="bytes: more than any valid one"):
        parse_connect(b"\x00" * (4 * 1024 * 1024))
    stream = BOUNDS.deserializer("/lingua.v1.SessionService/Stream", session_pb2.StreamRequest.FromString)
    assert stream is not None
    chunk = session_pb2.StreamRequest(audio=session_pb2.AudioChunk(data=b"\x00" * 262144)).SerializeToString()
    assert len(stream(chunk).audio.data) == 262144
    with pytest.raises(MessageTooLarge):
        stream(b"\x0a" + b"\x00" * 400_000)


def test_messages_read_for_a_refused_caller_are_not_parsed() -> None:
    with unparsed():
        assert parse_connect(registration(labels={str(i): "v" for i in range(150_000)})) is None
    assert parse_connect(registration(asr_languages=["en"])).register.node_id == "n1"


def test_the_walk_counts_nested_and_unknown_fields_and_leaves_malformed_bytes_to_the_parser() -> None:
    shape = shape_of(node_pb2.ConnectRequest.DESCRIPTOR)
    pair = common_pb2.LanguagePair(source_language="en", target_language="es")
    data = registration(translation_pairs=[pair] * 3)
    assert count_fields(data, shape, 1000) == 2 + 1 + 3 * 3  # register, node id, capabilities, 3 pairs of 2
    unknown = b"\x78\x00" * 50  # field 15, varint 0: unknown to every message here
    assert count_fields(unknown, shape, 1000) == 50
    assert count_fields(unknown, shape, 10) == 11  # stops once over
    assert count_fields(b"\x0a\xff\xff\x03", shape, 1000) == 0  # a length past the end
    assert BOUNDS.deserializer("/grpc.health.v1.Health/Check", len) is len  # unbounded services unchanged
