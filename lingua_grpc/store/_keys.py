"""Key layout. Every key an atomic operation touches shares one hash tag, so the scripts run on Redis Cluster.

Registry keys (tag `{registry}`), with the default prefix:
    lingua:v1:{registry}:version        registry version counter
    lingua:v1:{registry}:epoch          set with the first registration on an empty registry: a new value says
                                        Redis lost the registry (and versions started again from 0)
    lingua:v1:{registry}:nodes          set of registered node ids
    lingua:v1:{registry}:node:<id>      node hash: capabilities, state, instance, load, reserved...
    lingua:v1:{registry}:lease:<id>     lease, expires (PX) unless heartbeats renew it
    lingua:v1:{registry}:slots:<id>     set of job attempts holding one of the node's slots
    lingua:v1:{registry}:instances      set of scheduler instance ids
    lingua:v1:{registry}:instance:<id>  instance hash: address, started, last heartbeat, what it holds
    lingua:v1:{registry}:ilease:<id>    instance lease, expires (PX) unless its heartbeats renew it
    lingua:v1:{registry}:resume_key     the fleet's resume-token key, when no --resume-key-file is given
Instance keys (tag `{i:<instance_id>}`: each instance's traffic on its own slot):
    lingua:v1:{i:<id>}:inbox        stream of hand-offs to the instance (consumer group `lingua`)
    lingua:v1:{i:<id>}:lease        inbox lease: others hand it work only while this exists
    lingua:v1:{i:<id>}:claim        set by the one survivor that took over what the dead instance left
    lingua:v1:{i:<id>}:sessions     set of the session ids the instance owns
Job keys (tag `{s:<session_id>}`: a session's jobs share one slot):
    lingua:v1:{s:<session_id>}:job:<index>     job hash: state, attempt, node, owner, timestamps, result
    lingua:v1:{s:<session_id>}:audio:<index>   the utterance's audio, kept for re-dispatch while the job is not
                                               final (TTL); deleted when it becomes final
    lingua:v1:{s:<session_id>}:live            set of the indexes of the session's non-final jobs
    lingua:v1:{s:<session_id>}:session         session hash: pair, format, options, owner and epoch, next index,
                                               audio recorded, answers sent, ended (for resuming anywhere)
    lingua:v1:{s:<session_id>}:tts:<index>     a result's synthesized speech, kept for a resuming client (TTL);
                                               deleted when the session ends for good
    lingua:v1:{s:<session_id>}:tts_kept        sorted set of the indexes whose synthesized speech may be kept,
                                               scored by when it expires (so the session's end finds them)
    lingua:v1:{probe}:write                     written (short TTL) to learn whether Redis takes writes again
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
    def epoch(self) -> str:
        return f"{self._tag}:epoch"

    @property
    def nodes(self) -> str:
        return f"{self._tag}:nodes"

    def node(self, node_id: str) -> str:
        return f"{self._tag}:node:{node_id}"

    def lease(self, node_id: str) -> str:
        return f"{self._tag}:lease:{node_id}"

    def slots(self, node_id: str) -> str:
        return f"{self._tag}:slots:{node_id}"

    @property
    def instances(self) -> str:
        return f"{self._tag}:instances"

    def instance(self, instance_id: str) -> str:
        return f"{self._tag}:instance:{instance_id}"

    def instance_lease(self, instance_id: str) -> str:
        return f"{self._tag}:ilease:{instance_id}"

    @property
    def resume_key(self) -> str:
        return f"{self._tag}:resume_key"


@dataclass(frozen=True, slots=True)
class InstanceKeys:
    prefix: str
    instance_id: str

    @property
    def _tag(self) -> str:
        return f"{self.prefix}{{i:{self.instance_id}}}"

    @property
    def inbox(self) -> str:
        return f"{self._tag}:inbox"

    @property
    def lease(self) -> str:
        return f"{self._tag}:lease"

    @property
    def claim(self) -> str:
        return f"{self._tag}:claim"

    @property
    def sessions(self) -> str:
        return f"{self._tag}:sessions"


@dataclass(frozen=True, slots=True)
class JobKeys:
    prefix: str

    def job(self, session_id: str, index: int) -> str:
        return f"{self.prefix}{{s:{session_id}}}:job:{index}"

    def audio(self, session_id: str, index: int) -> str:
        return f"{self.audio_prefix(session_id)}{index}"

    def audio_prefix(self, session_id: str) -> str:
        """The session's audio keys are this followed by an utterance index."""
        return f"{self.prefix}{{s:{session_id}}}:audio:"

    def live(self, session_id: str) -> str:
        return f"{self.prefix}{{s:{session_id}}}:live"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}{{s:{session_id}}}:session"

    def tts(self, session_id: str, index: int) -> str:
        return f"{self.tts_prefix(session_id)}{index}"

    def tts_prefix(self, session_id: str) -> str:
        """The session's TTS keys are this followed by an utterance index."""
        return f"{self.prefix}{{s:{session_id}}}:tts:"

    def tts_kept(self, session_id: str) -> str:
        return f"{self.prefix}{{s:{session_id}}}:tts_kept"

    @property
    def probe(self) -> str:
        return f"{self.prefix}{{probe}}:write"


def slot_member(job_id: str, attempt: int) -> str:
    """A job attempt as a member of a node's slot set."""
    return f"{job_id}#{attempt}"
