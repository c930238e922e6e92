"""Registry domain types: plain, immutable dataclasses with no I/O and no generated code."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lingua_grpc.errors import InvalidArgument

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def valid_language(tag: str) -> bool:
    return bool(_LANGUAGE_TAG.match(tag))


def canonical_language(tag: str) -> str:
    """BCP-47 tags are case-insensitive: the canonical case is `en`, `zh-Hant`, `pt-BR`, `es-419`.

    Applied wherever a tag enters (client start, node capabilities, pools file), so "EN-es" and "en-ES"
    name the same pair. A tag that is not well-formed is returned as it is, for `validate` to refuse.
    """
    tag = tag.strip()
    if not _LANGUAGE_TAG.match(tag):
        return tag
    first, *rest = tag.split("-")
    parts = [first.lower()]
    for sub in rest:
        if len(sub) == 4 and sub.isalpha():
            parts.append(sub.title())  # script
        elif (len(sub) == 2 and sub.isalpha()) or (len(sub) == 3 and sub.isdigit()):
            parts.append(sub.upper())  # region
        else:
            parts.append(sub.lower())
    return "-".join(parts)


@dataclass(frozen=True, slots=True, order=True)
class LanguagePair:
    source: str
    target: str

    def __str__(self) -> str:
        # "en-es"; tags that carry a region or script use '>' so the name stays unambiguous ("pt-BR>en").
        sep = ">" if "-" in self.source or "-" in self.target else "-"
        return f"{self.source}{sep}{self.target}"

    @classmethod
    def of(cls, source: str, target: str) -> LanguagePair:
        """The pair with both tags in canonical case (not validated)."""
        return cls(canonical_language(source), canonical_language(target))

    @classmethod
    def parse(cls, text: str) -> LanguagePair:
        """Parses "en-es" or "pt-BR>en"."""
        text = text.strip()
        if ">" in text:
            source, _, target = text.partition(">")
        else:
            parts = text.split("-")
            if len(parts) != 2:
                raise InvalidArgument(
                    f"language pair {text!r}: write SRC-TGT ('en-es'), or SRC>TGT when a tag has a region"
                    " ('pt-BR>en')"
                )
            source, target = parts
        pair = cls.of(source, target)
        pair.validate()
        return pair

    def validate(self) -> None:
        for role, tag in (("source", self.source), ("target", self.target)):
            if not valid_language(tag):
                raise InvalidArgument(
                    f"{role} language {tag[:40]!r} is not a BCP-47 tag such as 'en' or 'pt-BR'"
                )
        if self.source == self.target:
            raise InvalidArgument(f"source and target language are both {self.source!r}")


@dataclass(frozen=True, slots=True)
class RegistrationLimits:
    """Bounds on what one registration may claim (settings `node_max_*`), so no node can make the
    registry, its snapshots or Redis arbitrarily large."""

    max_concurrency: int = 1024
    max_pairs: int = 1024
    max_languages: int = 256
    max_labels: int = 32
    max_gpus: int = 64
    max_field_bytes: int = 256

    def check_counts(
        self, *, pairs: int, asr_languages: int, tts_languages: int, labels: int, gpus: int, running: int = 0
    ) -> None:
        """Refuses a registration whose entry counts are over the limits: checked on the counts alone,
        before the registration is converted or looked at entry by entry, so a huge one costs its sender,
        not the registry (issue 19: 100,000 pairs took the loop 110 ms to convert, then were refused)."""
        for name, count, limit in (
            ("capabilities.translation_pairs", pairs, self.max_pairs),
            ("capabilities.asr_languages", asr_languages, self.max_languages),
            ("capabilities.tts_languages", tts_languages, self.max_languages),
            ("capabilities.labels", labels, self.max_labels),
            ("capabilities.gpus", gpus, self.max_gpus),
            ("running_jobs", running, self.max_concurrency),
        ):
            if count > limit:
                raise InvalidArgument(f"{name} has {count} entries; at most {limit} are accepted")


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    uuid: str = ""
    memory_total_bytes: int = 0


@dataclass(frozen=True, slots=True)
class NodeCapabilities:
    asr_languages: tuple[str, ...] = ()
    translation_pairs: tuple[LanguagePair, ...] = ()
    tts_languages: tuple[str, ...] = ()
    gpus: tuple[Gpu, ...] = ()
    max_concurrency: int = 1
    agent_version: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def pairs_served(self) -> frozenset[LanguagePair]:
        """Pairs the node can take a job for: it transcribes the source and translates the pair."""
        asr = set(self.asr_languages)
        return frozenset(p for p in self.translation_pairs if p.source in asr)

    def synthesizes(self, language: str) -> bool:
        return language in self.tts_languages

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def to_json(self) -> str:
        """Canonical JSON (sorted, deduplicated), so equal capabilities always compare equal in Redis."""
        return json.dumps(
            {
                "asr_languages": sorted(set(self.asr_languages)),
                "translation_pairs": sorted({(p.source, p.target) for p in self.translation_pairs}),
                "tts_languages": sorted(set(self.tts_languages)),
                "gpus": [[g.index, g.name, g.uuid, g.memory_total_bytes] for g in self.gpus],
                "max_concurrency": self.max_concurrency,
                "agent_version": self.agent_version,
                "labels": dict(sorted(self.labels)),
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeCapabilities:
        d: dict[str, Any] = json.loads(text)
        return cls(
            asr_languages=tuple(d["asr_languages"]),
            translation_pairs=tuple(LanguagePair(s, t) for s, t in d["translation_pairs"]),
            tts_languages=tuple(d["tts_languages"]),
            gpus=tuple(Gpu(*g) for g in d["gpus"]),
            max_concurrency=int(d["max_concurrency"]),
            agent_version=d["agent_version"],
            labels=tuple(sorted(d["labels"].items())),
        )

    def validate(self, limits: RegistrationLimits) -> None:
        if not 1 <= self.max_concurrency <= limits.max_concurrency:
            raise InvalidArgument(
                f"capabilities.max_concurrency must be 1 to {limits.max_concurrency}, got {self.max_concurrency}"
            )
        # Counts first, before any per-entry work: a huge registration costs its sender, not the registry.
        limits.check_counts(
            pairs=len(self.translation_pairs),
            asr_languages=len(self.asr_languages),
            tts_languages=len(self.tts_languages),
            labels=len(self.labels),
            gpus=len(self.gpus),
        )
        texts = [("agent_version", self.agent_version)]
        texts += [(f"labels key {k[:40]!r}", k) for k, _ in self.labels]
        texts += [(f"labels[{k[:40]!r}]", v) for k, v in self.labels]
        texts += [(f"gpus[{g.index}] name", g.name) for g in self.gpus]
        texts += [(f"gpus[{g.index}] uuid", g.uuid) for g in self.gpus]
        for what, text in texts:
            if len(text.encode()) > limits.max_field_bytes:
                raise InvalidArgument(f"capabilities.{what} is longer than {limits.max_field_bytes} bytes")
        for tag in (*self.asr_languages, *self.tts_languages):
            if not valid_language(tag):
                raise InvalidArgument(f"language {tag[:40]!r} is not a BCP-47 tag such as 'en' or 'pt-BR'")
        for pair in self.translation_pairs:
            pair.validate()
        if not self.pairs_served():
            raise InvalidArgument(
                "the node serves no language pair: capabilities need a translation pair whose source"
                " language is among asr_languages"
            )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    running_jobs: int = 0
    gpu_utilization: float = 0.0
    gpu_memory_used_bytes: int = 0
    cpu_utilization: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            [self.running_jobs, self.gpu_utilization, self.gpu_memory_used_bytes, self.cpu_utilization],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeLoad:
        v = json.loads(text)
        return cls(*v) if isinstance(v, list) and len(v) == 4 else cls()


class NodeState(enum.Enum):
    UP = "up"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Registration:
    """What a node asks for when it connects."""

    node_id: str
    capabilities: NodeCapabilities
    running: tuple[tuple[str, int], ...] = ()  # (job id, attempt) the node still holds (a re-registration)

    def validate(self, limits: RegistrationLimits) -> None:
        if not NODE_ID.match(self.node_id):
            raise InvalidArgument(
                f"register.node_id {self.node_id[:140]!r} must be 1 to 128 letters, digits, '.', '_' or '-'"
            )
        self.capabilities.validate(limits)
        if len(self.running) > self.capabilities.max_concurrency:
            raise InvalidArgument(
                f"register.running_jobs lists {len(self.running)} attempts, more than max_concurrency"
                f" {self.capabilities.max_concurrency}"
            )
        for job_id, _ in self.running:
            if not job_id or len(job_id.encode()) > limits.max_field_bytes:
                raise InvalidArgument(
                    f"register.running_jobs: a job id must be 1 to {limits.max_field_bytes} bytes"
                )


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered node as Redis holds it."""

    node_id: str
    state: NodeState
    capabilities: NodeCapabilities
    load: NodeLoad = field(default_factory=NodeLoad)
    reserved_slots: int = 0
    instance_id: str = ""
    registered_ms: int = 0
    last_heartbeat_ms: int = 0
    lease_remaining_ms: int = 0

    @property
    def max_concurrency(self) -> int:
        return self.capabilities.max_concurrency

    @property
    def free_slots(self) -> int:
        return max(0, self.capabilities.max_concurrency - self.reserved_slots)
