import pytest
from hypothesis import given
from hypothesis import strategies as st

from lingua_grpc.errors import InvalidArgument
from lingua_grpc.nodes import NodeLink, lapsed
from lingua_grpc.registry import (
    LanguagePair,
    NodeCapabilities,
    NodeRecord,
    NodeState,
    PoolSpec,
    Registration,
    RegistrationLimits,
    build_snapshot,
    canonical_language,
    load_pools_file,
)

pytestmark = pytest.mark.unit

EN_ES = LanguagePair("en", "es")
EN_ZH = LanguagePair("en", "zh")


def caps(
    *pairs: LanguagePair, asr: tuple[str, ...] = ("en",), labels: dict[str, str] | None = None
) -> NodeCapabilities:
    return NodeCapabilities(
        asr_languages=asr,
        translation_pairs=pairs,
        tts_languages=tuple(p.target for p in pairs),
        max_concurrency=2,
        labels=tuple(sorted((labels or {}).items())),
    )


def record(node_id: str, c: NodeCapabilities, state: NodeState = NodeState.UP) -> NodeRecord:
    return NodeRecord(node_id=node_id, state=state, capabilities=c)


def test_pair_parsing_accepts_both_spellings() -> None:
    assert LanguagePair.parse("en-es") == EN_ES
    assert LanguagePair.parse("pt-BR>en") == LanguagePair("pt-BR", "en")
    assert str(LanguagePair("pt-BR", "en")) == "pt-BR>en"
    assert str(EN_ES) == "en-es"


@pytest.mark.parametrize(
    ("tag", "canonical"),
    [("EN", "en"), ("pt-br", "pt-BR"), ("ZH-hant-tw", "zh-Hant-TW"), ("es-419", "es-419"), (" en ", "en")],
)
def test_language_tags_are_case_insensitive(tag: str, canonical: str) -> None:
    assert canonical_language(tag) == canonical


def test_pairs_written_in_any_case_are_the_same_pair() -> None:
    assert LanguagePair.parse("EN-ES") == EN_ES
    assert LanguagePair.parse("PT-br>EN") == LanguagePair("pt-BR", "en")
    assert LanguagePair.of("En", "eS") == EN_ES


@pytest.mark.parametrize("text", ["en", "en-es-fr", "e-s", "en>en", "12-34", "EN>en"])
def test_bad_pairs_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidArgument):
        LanguagePair.parse(text)


def test_capabilities_json_is_canonical() -> None:
    a = NodeCapabilities(asr_languages=("fr", "en"), translation_pairs=(EN_ZH, EN_ES), max_concurrency=3)
    b = NodeCapabilities(asr_languages=("en", "fr"), translation_pairs=(EN_ES, EN_ZH), max_concurrency=3)
    assert a.to_json() == b.to_json()
    assert NodeCapabilities.from_json(a.to_json()).pairs_served() == {EN_ES, EN_ZH}


def test_a_pair_needs_asr_of_its_source_to_be_served() -> None:
    assert caps(EN_ES, asr=("fr",)).pairs_served() == frozenset()


@pytest.mark.parametrize(
    ("registration", "fragment"),
    [
        (Registration("bad id!", caps(EN_ES)), "node_id"),
        (Registration("n1", NodeCapabilities(("en",), (EN_ES,), max_concurrency=0)), "max_concurrency"),
        (Registration("n1", caps(EN_ES, asr=("de",))), "serves no language pair"),
        (Registration("n1", NodeCapabilities(("en",), (EN_ES,), ("es_ES!",), max_concurrency=1)), "BCP-47"),
    ],
)
def test_bad_registrations_name_the_field(registration: Registration, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        registration.validate(RegistrationLimits(max_concurrency=64))


LIMITS = RegistrationLimits(max_pairs=3, max_languages=2, max_labels=1, max_gpus=1, max_field_bytes=8)


@pytest.mark.parametrize(
    ("capabilities", "fragment"),
    [
        (caps(*(LanguagePair("en", t) for t in ("es", "zh", "fr", "de"))), "translation_pairs has 4"),
        (caps(EN_ES, asr=("en", "fr", "de")), "asr_languages has 3"),
        (caps(EN_ES, labels={"a": "1", "b": "2"}), "labels has 2"),
        (caps(EN_ES, labels={"tier": "x" * 9}), "longer than 8 bytes"),
        (caps(EN_ES, labels={"k" * 9: "x"}), "longer than 8 bytes"),
    ],
)
def test_registrations_over_a_limit_are_refused_naming_it(
    capabilities: NodeCapabilities, fragment: str
) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        Registration("n1", capabilities).validate(LIMITS)


def test_limits_are_checked_before_the_entries_themselves() -> None:
    # 100,000 malformed pairs: the count refuses them without a look at each.
    pairs = tuple(LanguagePair("en", "!!") for _ in range(100_000))
    with pytest.raises(InvalidArgument, match="translation_pairs has 100000 entries; at most 1024"):
        Registration("n1", caps(*pairs)).validate(RegistrationLimits())


def test_snapshot_of_a_node_with_many_pairs_names_each_pool_once() -> None:
    targets = [f"{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
    many = tuple(LanguagePair("en", t) for t in targets if t != "en")
    snap = build_snapshot(1, [record("a", caps(*many))], (), 0)
    assert len(snap.pools_by_node["a"]) == len(many) == len(set(snap.pools_by_node["a"]))


def test_snapshot_indexes_pools_by_pair_and_node() -> None:
    snap = build_snapshot(7, [record("a", caps(EN_ES, EN_ZH)), record("b", caps(EN_ES))], (), built_ms=1)
    assert [p.name for p in snap.pools] == ["en-es", "en-zh"]
    assert snap.pools_for(EN_ES)[0].node_ids == ("a", "b")
    assert snap.pools_by_node["a"] == ("en-es", "en-zh")
    assert snap.serves(EN_ZH)
    assert not snap.serves(LanguagePair("en", "fr"))
    assert [n.node_id for n in snap.nodes_for(EN_ZH)] == ["a"]


def test_capability_change_moves_node_between_pools() -> None:
    before = build_snapshot(1, [record("a", caps(EN_ES))], (), 0)
    after = build_snapshot(2, [record("a", caps(EN_ZH))], (), 0)
    assert before.pools_by_node["a"] == ("en-es",)
    assert after.pools_by_node["a"] == ("en-zh",)
    assert not after.serves(EN_ES)


def test_snapshot_cannot_be_mutated() -> None:
    snap = build_snapshot(1, [record("a", caps(EN_ES))], (), 0)
    with pytest.raises(TypeError):
        snap.nodes["b"] = snap.nodes["a"]  # type: ignore[index]


def test_configured_pools_replace_the_derived_pool_of_their_pairs() -> None:
    specs = (
        PoolSpec("premium", (EN_ES,), labels=(("tier", "premium"),)),
        PoolSpec("pinned", (EN_ES,), node_ids=frozenset({"b"})),
    )
    nodes = [record("a", caps(EN_ES, EN_ZH, labels={"tier": "premium"})), record("b", caps(EN_ES))]
    snap = build_snapshot(1, nodes, specs, 0)
    by_name = {(p.name, str(p.pair)): p for p in snap.pools}
    assert set(by_name) == {("premium", "en-es"), ("pinned", "en-es"), ("en-zh", "en-zh")}
    assert by_name["premium", "en-es"].node_ids == ("a",)
    assert by_name["pinned", "en-es"].node_ids == ("b",)
    assert by_name["premium", "en-es"].configured


def test_pools_file_is_read_and_checked(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "pools.toml"
    path.write_text('[[pools]]\nname = "gold"\npairs = ["en-es"]\nlabels = { tier = "gold" }\n')
    (spec,) = load_pools_file(path)
    assert spec.name == "gold" and spec.pairs == (EN_ES,) and spec.labels == (("tier", "gold"),)
    path.write_text('[[pools]]\nname = "gold"\npairs = ["english"]\n')
    with pytest.raises(ValueError, match=r"pools\[0\] \(gold\)"):
        load_pools_file(path)


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=20), st.floats(0.1, 10))
def test_lapsed_links_are_exactly_those_silent_longer_than_the_lease(
    beats: list[float], lease: float
) -> None:
    now = 100.0
    links = [NodeLink(f"n{i}", "c", caps(EN_ES), now=b) for i, b in enumerate(beats)]
    expected = {link.node_id for link in links if now - link.last_heartbeat > lease}
    assert {link.node_id for link in lapsed(links, now, lease)} == expected
