import hashlib

import pytest

from lingua_grpc.security import CredentialBook, Principal, Role

pytestmark = pytest.mark.unit


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def book(*entries: dict[str, object]) -> CredentialBook:
    return CredentialBook.parse({"credentials": list(entries)})


def test_a_token_authenticates_as_its_credential_and_nothing_else() -> None:
    b = book(
        {"name": "app", "token_sha256": sha("t1"), "role": "client", "max_sessions": 5},
        {"name": "fleet", "token_sha256": sha("t2").upper(), "role": "node", "node_ids": ["gpu-a-*"]},
    )
    assert b.authenticate("t1") == Principal("app", Role.CLIENT, (), 5)
    fleet = b.authenticate("t2")
    assert fleet is not None and fleet.role is Role.NODE
    assert fleet.may_register("gpu-a-12") and not fleet.may_register("gpu-b-1")
    assert not fleet.may_act_as(Role.OPERATOR)
    assert b.authenticate("t3") is None
    assert b.authenticate(sha("t1")) is None, "the hash is not the token"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"name": "x", "token_sha256": "abc", "role": "client"}, "64 hex digits"),
        ({"name": "x", "token_sha256": sha("t"), "role": "admin"}, "role must be"),
        ({"name": "x", "token_sha256": sha("t"), "role": "node"}, "needs node_ids"),
        (
            {"name": "x", "token_sha256": sha("t"), "role": "client", "node_ids": ["a"]},
            "node credentials only",
        ),
        (
            {"name": "x", "token_sha256": sha("t"), "role": "node", "node_ids": ["a"], "max_sessions": 3},
            "client",
        ),
        ({"name": "x", "token": "plain", "role": "client"}, "unknown field"),
        ({"token_sha256": sha("t"), "role": "client"}, "name must be"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(entry: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        book(entry)


def test_names_and_tokens_are_unique_and_the_file_is_not_empty() -> None:
    with pytest.raises(ValueError, match="used twice"):
        book(
            {"name": "x", "token_sha256": sha("a"), "role": "client"},
            {"name": "x", "token_sha256": sha("b"), "role": "client"},
        )
    with pytest.raises(ValueError, match="same token"):
        book(
            {"name": "x", "token_sha256": sha("a"), "role": "client"},
            {"name": "y", "token_sha256": sha("a"), "role": "operator"},
        )
    with pytest.raises(ValueError, match="at least one"):
        CredentialBook.parse({})
