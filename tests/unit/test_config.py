import argparse

import pytest

from lingua_grpc.config import Settings

pytestmark = pytest.mark.unit


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_flag_beats_environment_beats_default() -> None:
    env = {"LINGUA_LISTEN": "0.0.0.0:7000", "LINGUA_HEARTBEAT_INTERVAL_MS": "250"}
    s = Settings.from_sources(_parse(["--listen", "127.0.0.1:9000"]), env)
    assert s.listen == "127.0.0.1:9000"
    assert s.heartbeat_interval_ms == 250
    assert s.key_prefix == "lingua:v1:"


def test_lease_is_heartbeats_times_interval() -> None:
    s = Settings(heartbeat_interval_ms=200, node_lease_heartbeats=4)
    assert s.node_lease_ms == 800
    assert Settings().node_lease_ms == 15000


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": "nowhere"}, "listen must be HOST:PORT"),
        ({"redis_url": "localhost:6379"}, "redis_url must start with redis://"),
        ({"key_prefix": "a{b}"}, "key_prefix"),
        ({"node_lease_heartbeats": 1}, "node_lease_heartbeats must be at least 2"),
        ({"log_level": "LOUD"}, "log_level"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**changes)  # type: ignore[arg-type]


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="LINGUA_METRICS_PORT"):
        Settings.from_sources(None, {"LINGUA_METRICS_PORT": "ninety"})


def test_instance_id_is_derived_when_unset() -> None:
    assert Settings().instance_id
    assert Settings().instance_id != Settings().instance_id


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert Settings.markdown_table() in readme, (
        "README settings table is stale: paste Settings.markdown_table()"
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.0.0.5:50051", "[::]:50051", "scheduler.internal:1"])
def test_outside_loopback_needs_credentials_and_tls_or_insecure(listen: str) -> None:
    with pytest.raises(ValueError, match="pass --auth-file and --tls-cert/--tls-key"):
        Settings(listen=listen)
    with pytest.raises(ValueError, match="pass --tls-cert/--tls-key"):
        Settings(listen=listen, auth_file="auth.toml")
    assert Settings(listen=listen, insecure=True).listen == listen
    assert Settings(listen=listen, auth_file="a.toml", tls_cert="c.pem", tls_key="k.pem").listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:50051", "[::1]:50051", "127.8.9.1:1"])
def test_loopback_needs_nothing(listen: str) -> None:
    assert Settings(listen=listen).listen == listen


def test_insecure_is_a_bare_flag() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    assert Settings.from_sources(parser.parse_args(["--listen", "0.0.0.0:1", "--insecure"]), {}).insecure
