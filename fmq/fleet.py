"""
Collapsing across a fleet (C{[fleet] registry}): one broker request per batch
for all the instances that share a registry.

The instance that opens a group for a collapse key subscribes to the key's
answer channel, then tries to take the key's lease. Whoever takes it is the
holder: it makes the broker request, renews the lease while it is in flight,
publishes the answer on the channel and releases the lease. The others follow:
they wait for the answer, and try the lease again every half lease period, so
that one of them takes over within about two lease periods when the holder
dies. While the registry cannot be reached, every group is collapsed by its
own instance alone, as without a fleet.

The encodings here are pure functions; L{Fleet} carries out the protocol on
an L{fmq.interfaces.IRegistry} and a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from hashlib import sha256
from typing import Any, Union

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from fmq import errors
from fmq.errors import BrokerFailed, BrokerRequestFailed, RequestExpired
from fmq.interfaces import IRegistry
from fmq.protocol import BrokerRequest, BrokerResponse

__all__ = [
    "CLAIM",
    "LOCAL",
    "MAX_SHARED_BYTES",
    "SHARED_ERRORS",
    "VERSION",
    "Fleet",
    "Message",
    "Submit",
    "Unencodable",
    "canonical",
    "channel_name",
    "decode_message",
    "encode_answer",
    "encode_error",
    "encode_next",
    "lease_name",
    "message_for",
    "namespace",
    "registry_name",
]

#: bumped whenever the names, the lease protocol or the messages change, so
#: that instances of different versions never share answers.
VERSION = b"fmq-fleet-1"

#: an answer whose message is larger than this is not sent through the
#: registry even under a larger C{max_answer_bytes}: Redis cuts off a
#: subscriber whose output buffer passes 32 MiB (its default
#: C{client-output-buffer-limit pubsub}). Each instance then asks for it.
MAX_SHARED_BYTES = 16 * 1024 * 1024

Submit = Callable[[BrokerRequest], "Deferred[BrokerResponse]"]


class Unencodable(TypeError):
    """
    A collapse key holds a value with no stable canonical encoding.
    """


def canonical(value: object) -> bytes:
    """
    A canonical encoding of a collapse key: equal keys, the same bytes, in
    every process and on every Python.

    Encodes C{None}, C{bool}, C{int}, C{str}, C{bytes}, and C{tuple} and
    C{frozenset} of those, recursively; a C{bool} is encoded as the C{int}
    it equals, as Python's own equality has it (C{True == 1}). Subclasses
    and other types (floats, objects) are refused: their equality is theirs
    to define, and C{repr} is not stable across processes for all of them.

    @raise Unencodable: the key holds a value it cannot encode.
    """
    kind = type(value)
    if value is None:
        return b"N"
    if kind is bool or kind is int:
        return b"i%d;" % int(value)  # type: ignore[call-overload]
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        return b"s%d:%s" % (len(data), data)
    if kind is bytes:
        return b"b%d:%s" % (len(value), value)  # type: ignore[arg-type]
    if kind is tuple:
        return b"(" + b"".join(canonical(item) for item in value) + b")"  # type: ignore[attr-defined]
    if kind is frozenset:
        return b"{" + b"".join(sorted(canonical(item) for item in value)) + b"}"  # type: ignore[attr-defined]
    raise Unencodable(f"no canonical encoding for {kind.__name__}")


def namespace(identity: Mapping[str, str]) -> str:
    """
    A short name for the settings that change an answer (collapse key,
    request format, broker, mode): instances whose settings differ get
    different namespaces and never share answers.
    """
    encoded = canonical(tuple(sorted(identity.items())))
    return sha256(VERSION + b"\0" + encoded).hexdigest()[:16]


def registry_name(space: str, key: Hashable) -> str | None:
    """
    The registry's name for collapse key C{key} in namespace C{space}:
    C{fmq:<space>:<sha256 of the canonical encoding, 32 hex digits>}, or
    C{None} if the key cannot be encoded (its callers collapse on their own
    instance only).
    """
    try:
        encoded = canonical(key)
    except Unencodable:
        return None
    return f"fmq:{space}:{sha256(encoded).hexdigest()[:32]}"


def lease_name(name: str) -> str:
    """
    The name of the lease on registry name C{name}.
    """
    return name + ":lease"


def channel_name(name: str) -> str:
    """
    The channel on which the answers for registry name C{name} are published.
    """
    return name + ":answer"


# -- messages on a key's answer channel: b"fmq1 " + a JSON line + b"\n" + body

_MAGIC = b"fmq1 "

#: what the followers do when the holder publishes no answer
CLAIM = "claim"  # the holder gave up (its broker is unusable): try the lease
LOCAL = "local"  # the answer is too large to share: ask your own broker

#: the failures whose outcome is the answer's, the same on every instance;
#: any other (the holder's broker unreachable, shutting down) is the holder's.
SHARED_ERRORS: dict[str, type[BrokerRequestFailed]] = {
    cls.kind: cls
    for cls in [
        errors.MalformedResponse,
        errors.AnswerTooLarge,
        errors.RequestExpired,
    ]
}

Message = Union[BrokerResponse, BrokerRequestFailed, str]


def _to_json(value: object) -> object:
    if isinstance(value, bytes):
        return {"b": value.decode("latin-1")}
    if isinstance(value, tuple):
        return {"t": [_to_json(item) for item in value]}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} through the registry")


def _from_json(value: Any) -> object:
    if isinstance(value, dict):
        if "b" in value:
            return value["b"].encode("latin-1")
        return tuple(_from_json(item) for item in value["t"])
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def encode_answer(response: BrokerResponse) -> bytes:
    """
    The message that carries C{response}: every attrs field of it, so that
    fields added later travel too; the body raw at the end.
    """
    fields = {
        name: _to_json(value)
        for name, value in attrs.asdict(response, recurse=False).items()
        if name != "body"
    }
    head = json.dumps({"answer": fields}, separators=(",", ":")).encode()
    return _MAGIC + head + b"\n" + response.body


def encode_error(kind: str) -> bytes:
    """
    The message that gives every follower's callers the error of C{kind}.
    """
    return _MAGIC + json.dumps({"error": kind}).encode() + b"\n"


def encode_next(what: str) -> bytes:
    """
    The message that tells followers what to do next (L{CLAIM}, L{LOCAL}).
    """
    return _MAGIC + json.dumps({"next": what}).encode() + b"\n"


def decode_message(data: bytes) -> Message:
    """
    What a message on an answer channel says: the answer, the error every
    caller gets, or what to do next (L{CLAIM}, L{LOCAL}); a message this
    version cannot read says L{LOCAL}.
    """
    end = data.find(b"\n", len(_MAGIC))
    if not data.startswith(_MAGIC) or end < 0:
        return LOCAL
    head, body = data[len(_MAGIC) : end], data[end + 1 :]
    try:
        document = json.loads(head)
        if "answer" in document:
            fields = {name: _from_json(value) for name, value in document["answer"].items()}
            return BrokerResponse(body=body, **fields)  # type: ignore[arg-type]
        if "error" in document:
            return SHARED_ERRORS.get(document["error"], BrokerFailed)()
        if document.get("next") == CLAIM:
            return CLAIM
    except (ValueError, TypeError, AttributeError, KeyError):
        pass
    return LOCAL


_CLAIM_MESSAGE = encode_next(CLAIM)


def message_for(result: BrokerResponse | Failure, limit: int) -> bytes:
    """
    What a holder publishes for the outcome of its broker request: the
    answer if its message is at most C{limit} bytes, else L{LOCAL}; an error
    that is the answer's (a malformed answer, the TTL), else L{CLAIM}.
    """
    if isinstance(result, BrokerResponse):
        try:
            message = encode_answer(result)
        except TypeError:
            return encode_next(LOCAL)
        return message if len(message) <= limit else encode_next(LOCAL)
    kind = getattr(result.value, "kind", None)
    if kind in SHARED_ERRORS and isinstance(result.value, SHARED_ERRORS[kind]):
        return encode_error(kind)
    return encode_next(CLAIM)


# -- the protocol


@attrs.define(eq=False)
class _Claim:
    """
    One group's part in the fleet, from its opening to its end.

    @ivar state: C{subscribing}, C{claiming}, C{holding}, C{following},
        C{local} or C{done}.
    """

    name: str
    request: BrokerRequest
    submit: Submit
    token: str
    result: Deferred[BrokerResponse] = attrs.field(factory=Deferred)
    state: str = "subscribing"
    subscribed: bool = False
    leased: bool = False
    broker: Deferred[BrokerResponse] | None = None
    renewer: LoopingCall | None = None
    poller: IDelayedCall | None = None
    deadline: IDelayedCall | None = None
    #: what the registry calls with each message on the answer channel
    receive: Callable[[bytes], None] = lambda message: None


class Fleet:
    """
    Carries out the fleet's protocol for the dispatcher's groups.

    @ivar led: groups whose broker request this instance made as holder.
    @ivar followed: groups that waited for another instance's answer.
    @ivar taken_over: groups that took the lease over from a holder gone.
    @ivar local: groups collapsed on this instance alone (registry down,
        a key it cannot encode, an answer too large to share).
    """

    log = Logger()

    def __init__(
        self,
        registry: IRegistry,
        clock: IReactorTime,
        space: str,
        instance: str,
        lease: float,
        request_ttl: float,
        max_answer_bytes: int,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._space = space
        self._instance = instance
        self._lease = lease
        self._lease_ms = max(1, int(lease * 1000))
        self._ttl = request_ttl
        self._limit = min(max_answer_bytes, MAX_SHARED_BYTES)
        self._claims: set[_Claim] = set()
        self.led = 0
        self.followed = 0
        self.taken_over = 0
        self.local = 0
        registry.watch(self._availability)

    @property
    def state(self) -> str:
        """
        C{"ok"} while the registry can be reached, else C{"degraded"}.
        """
        return "ok" if self._registry.available else "degraded"

    def run(
        self, key: Hashable, request: BrokerRequest, submit: Submit
    ) -> Deferred[BrokerResponse]:
        """
        The outcome of the broker request for a new group of collapse key
        C{key}: made here with C{submit}, or by another instance.
        """
        name = registry_name(self._space, key)
        if name is None or not self._registry.available:
            self.local += 1
            return submit(request)
        claim = _Claim(name, request, submit, f"{self._instance}:{request.id}")
        claim.receive = lambda message: self._received(claim, message)
        self._claims.add(claim)
        subscribing = self._registry.subscribe(channel_name(name), claim.receive)
        self._within(subscribing).addCallbacks(
            lambda _: self._subscribed(claim), lambda f: self._unreachable(claim, f)
        )
        return claim.result

    def _within(self, deferred: Deferred[Any]) -> Deferred[Any]:
        """
        C{deferred}, failed if the registry has not answered within a lease.
        """
        return deferred.addTimeout(self._lease, self._clock)

    def _subscribed(self, claim: _Claim) -> None:
        claim.subscribed = True
        if claim.state != "subscribing":
            self._unsubscribe(claim)
            return
        claim.state = "claiming"
        self._try_lease(claim)

    def _try_lease(self, claim: _Claim) -> None:
        claiming = self._registry.claim(lease_name(claim.name), claim.token, self._lease_ms)
        self._within(claiming).addCallbacks(
            lambda won: self._claimed(claim, won), lambda f: self._unreachable(claim, f)
        )

    def _claimed(self, claim: _Claim, won: bool) -> None:
        if claim.state not in ("claiming", "following"):
            if won:  # answered or gone local meanwhile
                self._release(claim.name, claim.token)
            return
        if won:
            if claim.state == "following":
                self.taken_over += 1
                self.log.info(
                    "took over {request}: its holder is gone",
                    request=claim.request.line,
                )
            self._hold(claim)
        elif claim.state == "claiming":
            self._follow(claim)
        else:
            self._poll_later(claim)

    def _hold(self, claim: _Claim) -> None:
        self.led += 1
        claim.state = "holding"
        claim.leased = True
        self._stop_timers(claim)
        # The holder never needs its own answer echoed back.
        self._unsubscribe(claim)
        claim.renewer = LoopingCall(self._renew, claim)
        claim.renewer.clock = self._clock
        claim.renewer.start(self._lease / 3, now=False)
        claim.broker = claim.submit(claim.request)
        claim.broker.addBoth(self._answered, claim)

    def _renew(self, claim: _Claim) -> None:
        def renewed(still_ours: bool) -> None:
            if not still_ours and claim.leased:
                claim.leased = False
                self._stop_renewing(claim)
                self.log.info(
                    "lost the lease on {request}; answering its callers anyway",
                    request=claim.request.line,
                )

        renewing = self._registry.renew(lease_name(claim.name), claim.token, self._lease_ms)
        # A renewal the registry misses is tried again at the next tick.
        self._within(renewing).addCallbacks(renewed, lambda f: None)

    def _answered(self, result: BrokerResponse | Failure, claim: _Claim) -> None:
        """
        The holder's broker request ended: tell the others, release the lease.
        """
        self._stop_renewing(claim)
        if claim.state != "holding":
            return None
        if self._registry.available:
            message = message_for(result, self._limit)
            if message == _CLAIM_MESSAGE:
                # Release first, so a follower's claim on this message wins.
                self._release(claim.name, claim.token)
                claim.leased = False
            self._ignore(self._registry.publish(channel_name(claim.name), message))
        self._end(claim, result)
        return None

    def _follow(self, claim: _Claim) -> None:
        self.followed += 1
        claim.state = "following"
        claim.deadline = self._clock.callLater(self._ttl + 2 * self._lease, self._give_up, claim)
        self._poll_later(claim)

    def _poll_later(self, claim: _Claim) -> None:
        self._cancel_poll(claim)  # one poller per claim, however the lease was lost
        claim.poller = self._clock.callLater(self._lease / 2, self._poll, claim)

    def _poll(self, claim: _Claim) -> None:
        claim.poller = None
        if claim.state == "following":
            self._try_lease(claim)

    def _give_up(self, claim: _Claim) -> None:
        claim.deadline = None
        self.log.info(
            "no answer for {request} through the registry within its TTL",
            request=claim.request.line,
        )
        self._end(claim, Failure(RequestExpired()))

    def _received(self, claim: _Claim, data: bytes) -> None:
        if claim.state not in ("subscribing", "claiming", "following"):
            return
        message = decode_message(data)
        if message == CLAIM:
            if claim.state == "following":
                self._cancel_poll(claim)
                self._try_lease(claim)
        elif message == LOCAL:
            self._go_local(claim)
        elif isinstance(message, BrokerResponse):
            self._end(claim, message)
        else:
            self._end(claim, Failure(message))

    def _unreachable(self, claim: _Claim, failure: Failure) -> None:
        if claim.state in ("subscribing", "claiming", "following"):
            self.log.debug(
                "registry did not answer for {request} ({error}); asking the broker here",
                request=claim.request.line,
                error=failure.getErrorMessage(),
            )
            self._go_local(claim)

    def _availability(self, available: bool) -> None:
        if available:
            return
        for claim in list(self._claims):
            if claim.state in ("subscribing", "claiming", "following"):
                self._go_local(claim)

    def _go_local(self, claim: _Claim) -> None:
        self.local += 1
        claim.state = "local"
        self._stop_timers(claim)
        self._unsubscribe(claim)
        claim.broker = claim.submit(claim.request)
        claim.broker.addBoth(self._local_answered, claim)

    def _local_answered(self, result: BrokerResponse | Failure, claim: _Claim) -> None:
        self._end(claim, result)

    def _end(self, claim: _Claim, result: BrokerResponse | Failure) -> None:
        if claim.state == "done":
            return
        claim.state = "done"
        self._claims.discard(claim)
        self._stop_timers(claim)
        self._stop_renewing(claim)
        self._unsubscribe(claim)
        if claim.leased:
            claim.leased = False
            self._release(claim.name, claim.token)
        if isinstance(result, Failure):
            claim.result.errback(result)
        else:
            claim.result.callback(result)

    def _release(self, name: str, token: str) -> None:
        if self._registry.available:
            self._ignore(self._registry.release(lease_name(name), token))

    def _unsubscribe(self, claim: _Claim) -> None:
        if claim.subscribed:
            claim.subscribed = False
            self._registry.unsubscribe(channel_name(claim.name), claim.receive)

    def _cancel_poll(self, claim: _Claim) -> None:
        if claim.poller is not None:
            if claim.poller.active():
                claim.poller.cancel()
            claim.poller = None

    def _stop_timers(self, claim: _Claim) -> None:
        self._cancel_poll(claim)
        if claim.deadline is not None:
            if claim.deadline.active():
                claim.deadline.cancel()
            claim.deadline = None

    def _stop_renewing(self, claim: _Claim) -> None:
        if claim.renewer is not None:
            if claim.renewer.running:
                claim.renewer.stop()
            claim.renewer = None

    def _ignore(self, deferred: Deferred[Any]) -> None:
        """
        A registry write whose outcome changes nothing here: a lost one is
        made good by the lease's expiry and the followers' polling.
        """
        self._within(deferred).addErrback(lambda f: None)
