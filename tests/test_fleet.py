"""
Collapsing across a fleet: the encodings, and the lease protocol run by
several dispatchers on one in-memory registry and one clock.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from fmq.dispatch import Dispatcher
from fmq.errors import BrokerUnavailable, MalformedResponse
from fmq.fleet import (
    CLAIM,
    LOCAL,
    Fleet,
    Unencodable,
    canonical,
    decode_message,
    encode_answer,
    message_for,
    namespace,
    registry_name,
)
from fmq.interfaces import IRegistry
from fmq.keys import CallerRequest, CollapseKey, method_and_path, reads_per_credentials
from fmq.protocol import BrokerResponse
from fmq.testing import MemoryBroker, MemoryRegistry

LEASE = 5.0
TIMEOUT = 60.0

keys = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)


class CanonicalTests(SynchronousTestCase):
    """
    Collapse keys map to registry names by a canonical encoding.
    """

    @given(keys, keys)
    def test_equal_keys_equal_bytes(self, a: object, b: object) -> None:
        """
        Two keys have the same encoding exactly when they are equal.
        """
        self.assertEqual(canonical(a) == canonical(b), a == b)

    def test_frozenset_order(self) -> None:
        """
        A frozenset's encoding does not depend on its iteration order.
        """
        self.assertEqual(
            canonical(frozenset([b"b", "a", 3, (None,)])),
            canonical(frozenset([(None,), 3, "a", b"b"])),
        )

    def test_refused(self) -> None:
        """
        Floats, lists, objects and subclasses have no canonical encoding:
        such a key is collapsed on its own instance only.
        """

        class Text(str):
            pass

        for key in [1.5, [1], object(), (b"GET", object()), Text("x")]:
            self.assertRaises(Unencodable, canonical, key)
            self.assertIsNone(registry_name("space", key))

    def test_default_keys(self) -> None:
        """
        The keys fmq's own collapse key functions return are encoded.
        """
        name = registry_name("space", method_and_path(CallerRequest(b"GET", b"/a?b=1")))
        self.assertIsNotNone(name)
        self.assertEqual(name, registry_name("space", (b"GET", b"/a?b=1")))
        self.assertNotEqual(name, registry_name("other", (b"GET", b"/a?b=1")))

    def test_namespace(self) -> None:
        """
        Instances whose answer-changing settings differ get different namespaces.
        """
        base = {"collapse_key": "fmq.keys.method_and_path", "request_format": "line"}
        self.assertEqual(namespace(base), namespace(dict(reversed(list(base.items())))))
        self.assertNotEqual(namespace(base), namespace({**base, "request_format": "json"}))


class MessageTests(SynchronousTestCase):
    """
    What crosses the registry: answers, errors, and what to do next.
    """

    def test_answer(self) -> None:
        """
        Every field of the answer travels, the body byte for byte.
        """
        values = {
            field.name: field.default
            for field in attrs.fields(BrokerResponse)
            if field.default is not attrs.NOTHING
        }
        values["headers"] = ((b"Content-Type", b"text/plain"), (b"X-A", b"\xff"))
        response = BrokerResponse(**{**values, "status": 201, "body": b"\x00\n\xffbody"})
        self.assertEqual(decode_message(encode_answer(response)), response)

    def test_errors(self) -> None:
        """
        An error that is the answer's own is shared; one of the holder's
        own broker says "claim"; an answer over the limit says "local".
        """
        from twisted.python.failure import Failure

        shared = decode_message(message_for(Failure(MalformedResponse("x")), 1000))
        self.assertIsInstance(shared, MalformedResponse)
        self.assertEqual(decode_message(message_for(Failure(BrokerUnavailable()), 1000)), CLAIM)
        big = BrokerResponse(200, b"x" * 1000)
        self.assertEqual(decode_message(message_for(big, 1000)), LOCAL)
        self.assertEqual(decode_message(b"garbage"), LOCAL)


@attrs.define
class Instance:
    broker: MemoryBroker
    registry: MemoryRegistry
    fleet: Fleet
    dispatcher: Dispatcher


class FleetTests(SynchronousTestCase):
    """
    Several instances on one registry collapse as one.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = MemoryRegistry(self.clock)
        self.instances: list[Instance] = []

    def instance(
        self,
        space: str = "space",
        max_answer_bytes: int = 1 << 20,
        ttl: float = 300.0,
        collapse_key: CollapseKey = method_and_path,
    ) -> Instance:
        registry = self.registry.sibling()
        broker = MemoryBroker(self.clock, request_ttl=ttl)
        broker.startService()
        fleet = Fleet(
            registry,
            self.clock,
            space,
            f"i{len(self.instances)}",
            LEASE,
            ttl,
            max_answer_bytes,
        )
        dispatcher = Dispatcher(broker, self.clock, TIMEOUT, collapse_key, fleet=fleet)
        instance = Instance(broker, registry, fleet, dispatcher)
        self.instances.append(instance)
        return instance

    def call(self, instance: Instance, path: bytes = b"/same"):
        return instance.dispatcher.handle(CallerRequest(b"GET", path))

    def sent(self) -> int:
        return sum(len(i.broker.sent) for i in self.instances)

    def test_memory_registry(self) -> None:
        """
        The in-memory registry provides the registry interface.
        """
        verifyObject(IRegistry, MemoryRegistry(Clock()))

    def test_one_broker_request_per_batch(self) -> None:
        """
        Identical callers on three instances make one broker request; every
        caller gets its answer; the next batch makes a new one.
        """
        a, b, c = self.instance(), self.instance(), self.instance()
        for batch in [1, 2]:
            calls = [self.call(i) for i in [a, b, c] * 10]
            self.assertEqual(self.sent(), batch)
            [holder] = [i for i in [a, b, c] if i.broker.outstanding()]
            holder.broker.respond(holder.broker.outstanding()[0], b"200\nbatch %d" % batch)
            for call in calls:
                self.assertEqual(self.successResultOf(call).body, b"batch %d" % batch)
        self.assertEqual((a.fleet.led + b.fleet.led + c.fleet.led), 2)
        self.assertEqual(sum(i.fleet.followed for i in [a, b, c]), 4)
        self.assertEqual(self.registry.holder("anything"), None)
        self.assertEqual(self.registry._store.leases, {})

    def test_holder_gone(self) -> None:
        """
        When the holder dies (its registry calls stop), a follower takes the
        lease over within two lease periods and asks its own broker; its
        callers get that answer.
        """
        a, b = self.instance(), self.instance()
        first = self.call(a)
        waiting = [self.call(b) for _ in range(3)]
        self.assertEqual([len(a.broker.sent), len(b.broker.sent)], [1, 0])
        a.registry.hang = True  # kill -9: no renewal, no answer
        for _ in range(int(2 * LEASE / 0.1)):
            self.clock.advance(0.1)
            if b.broker.outstanding():
                break
        self.assertEqual(len(b.broker.sent), 1)
        self.assertLessEqual(self.clock.seconds(), 2 * LEASE)
        self.assertEqual(b.fleet.taken_over, 1)
        b.broker.respond(b.broker.outstanding()[0], b"200\nfrom b")
        for call in waiting:
            self.assertEqual(self.successResultOf(call).body, b"from b")
        self.assertNoResult(first)

    def test_one_poller_per_follower(self) -> None:
        """
        A follower whose lease attempt is lost twice over (a poll's attempt
        and a holder's CLAIM crossing) keeps one poller, not two chains.
        """
        a, b = self.instance(), self.instance()
        self.call(a)
        self.call(b)
        [claim] = b.fleet._claims
        pollers = lambda: [c for c in self.clock.getDelayedCalls() if c.func == b.fleet._poll]  # noqa: E731
        self.assertEqual(len(pollers()), 1)
        b.fleet._poll_later(claim)
        self.assertEqual(len(pollers()), 1)

    def test_lease_renewed(self) -> None:
        """
        A holder whose broker request takes many lease periods keeps its
        lease: nobody takes over while it lives.
        """
        a, b = self.instance(), self.instance()
        self.call(a)
        waiting = self.call(b)
        self.clock.pump([0.5] * int(10 * LEASE / 0.5))
        self.assertEqual(self.sent(), 1)
        a.broker.respond(a.broker.outstanding()[0], b"200\nlate")
        self.assertEqual(self.successResultOf(waiting).body, b"late")

    def test_lease_lost(self) -> None:
        """
        A holder that loses its lease (the registry forgot it) still answers
        its own callers and publishes its answer; the instance that took the
        lease answers its own, and a follower takes whichever comes first.
        """
        a, b, c = self.instance(), self.instance(), self.instance()
        mine = self.call(a)
        self.registry._store.leases.clear()
        self.clock.advance(LEASE)  # a's renewal finds the lease gone
        theirs = self.call(b)
        following = self.call(c)
        self.assertEqual([len(i.broker.sent) for i in [a, b, c]], [1, 1, 0])
        a.broker.respond(a.broker.outstanding()[0], b"200\nfrom a")
        self.assertEqual(self.successResultOf(mine).body, b"from a")
        self.assertEqual(self.successResultOf(following).body, b"from a")
        b.broker.respond(b.broker.outstanding()[0], b"200\nfrom b")
        self.assertEqual(self.successResultOf(theirs).body, b"from b")
        self.assertEqual(self.registry._store.leases, {})

    def test_registry_down_and_back(self) -> None:
        """
        With the registry gone, followers ask their own broker at once and new
        groups collapse on their instance alone; once it is back, the fleet
        collapses as one again.
        """
        a, b = self.instance(), self.instance()
        self.call(a)
        following = self.call(b)
        b.registry.go_down()
        self.assertEqual(b.fleet.state, "degraded")
        self.assertEqual(len(b.broker.sent), 1)
        again = self.call(b, b"/other")
        self.assertEqual(len(b.broker.sent), 2)
        for request in b.broker.outstanding():
            b.broker.respond(request, b"200\nlocal")
        self.assertEqual(self.successResultOf(following).body, b"local")
        self.assertEqual(self.successResultOf(again).body, b"local")
        b.registry.come_back()
        self.assertEqual(b.fleet.state, "ok")
        later = self.call(b, b"/third")
        self.call(a, b"/third")
        self.assertEqual(self.sent(), 4)
        [holder] = [i for i in [a, b] if len(i.broker.outstanding()) == 1 + (i is a)]
        holder.broker.respond(holder.broker.outstanding()[-1], b"200\nshared")
        self.assertEqual(self.successResultOf(later).body, b"shared")

    def test_registry_silent(self) -> None:
        """
        A registry that takes calls and never answers costs a group one lease
        period; then it asks its own broker.
        """
        a = self.instance()
        a.registry.hang = True
        call = self.call(a)
        self.assertEqual(len(a.broker.sent), 0)
        self.clock.advance(LEASE)
        self.assertEqual(len(a.broker.sent), 1)
        a.broker.respond(a.broker.sent[0], b"200\nok")
        self.assertEqual(self.successResultOf(call).body, b"ok")

    def test_answer_before_subscribed(self) -> None:
        """
        An answer published while a follower's subscription is not yet in
        place never reaches it; it then takes the lease itself, asks its own
        broker, and is answered: it never waits forever.
        """
        a, b = self.instance(), self.instance()
        first = self.call(a)
        b.registry.hold_subscriptions = True
        late = self.call(b)
        a.broker.respond(a.broker.outstanding()[0], b"200\nfirst")
        self.assertEqual(self.successResultOf(first).body, b"first")
        b.registry.confirm_subscriptions()
        self.assertEqual(len(b.broker.sent), 1)
        b.broker.respond(b.broker.outstanding()[0], b"200\nsecond")
        self.assertEqual(self.successResultOf(late).body, b"second")

    def test_huge_answer(self) -> None:
        """
        An answer too large to cross the registry (C{max_answer_bytes}) is not
        published: each follower asks its own broker instead.
        """
        a, b = self.instance(max_answer_bytes=100), self.instance(max_answer_bytes=100)
        first, second = self.call(a), self.call(b)
        a.broker.respond(a.broker.outstanding()[0], b"200\n" + b"x" * 99)
        self.assertEqual(len(self.successResultOf(first).body), 99)
        self.assertTrue(all(len(m) < 100 for _, m in self.registry.published))
        self.assertEqual(len(b.broker.sent), 1)
        b.broker.respond(b.broker.outstanding()[0], b"200\n" + b"y" * 99)
        self.assertEqual(self.successResultOf(second).body, b"y" * 99)

    def test_error_shared(self) -> None:
        """
        A malformed answer is every caller's 502, for one broker request.
        """
        a, b = self.instance(), self.instance()
        first, second = self.call(a), self.call(b)
        a.broker.respond(a.broker.outstanding()[0], b"nonsense")
        self.failureResultOf(first, MalformedResponse)
        self.failureResultOf(second, MalformedResponse)
        self.assertEqual(self.sent(), 1)

    def test_holder_broker_unusable(self) -> None:
        """
        When the holder's own broker cannot take the request, a follower takes
        the lease at once and asks its own.
        """
        a, b = self.instance(), self.instance()
        a.broker.available = False
        first, second = self.call(a), self.call(b)
        self.failureResultOf(first, BrokerUnavailable)
        self.assertEqual(len(b.broker.sent), 1)
        b.broker.respond(b.broker.outstanding()[0], b"200\nb")
        self.assertEqual(self.successResultOf(second).body, b"b")

    def test_mixed_namespaces(self) -> None:
        """
        Instances in different namespaces (their settings differ) share nothing.
        """
        a, b = self.instance("one"), self.instance("two")
        self.call(a), self.call(b)
        self.assertEqual([len(a.broker.sent), len(b.broker.sent)], [1, 1])
        self.assertEqual(a.fleet.led + b.fleet.led, 2)

    def test_unencodable_key(self) -> None:
        """
        A key with no canonical encoding is collapsed on its instance alone,
        without a word to the registry.
        """
        a = self.instance()
        a.dispatcher = Dispatcher(
            a.broker, self.clock, TIMEOUT, lambda caller: object(), fleet=a.fleet
        )
        a.registry.hang = True
        self.call(a)
        self.assertEqual(len(a.broker.sent), 1)
        self.assertEqual(a.fleet.local, 1)

    def test_alone_never_in_registry(self) -> None:
        """
        A caller whose key is L{Alone} (a C{POST} under the default key) has
        its own broker request at once, even with the registry silent; the
        registry never hears of it, it is no fleet group, and it is
        withdrawn as soon as its caller leaves.
        """
        a, b = (self.instance(collapse_key=reads_per_credentials) for _ in range(2))
        for instance in [a, b]:
            instance.registry.hang = True
        posts = [i.dispatcher.handle(CallerRequest(b"POST", b"/same", body=b"x")) for i in [a, b]]
        self.assertEqual([len(a.broker.sent), len(b.broker.sent)], [1, 1])
        self.assertEqual(self.registry._store.leases, {})
        self.assertEqual(self.registry._store.channels, {})
        self.assertEqual(self.registry.published, [])
        self.assertEqual([i.fleet.local + i.fleet.led + i.fleet.followed for i in [a, b]], [0, 0])
        posts[0].cancel()
        self.failureResultOf(posts[0])
        self.assertEqual(a.broker.outstanding(), [])
        b.broker.respond(b.broker.outstanding()[0], b"200\nposted")
        self.assertEqual(self.successResultOf(posts[1]).body, b"posted")

    def test_default_key_reads(self) -> None:
        """
        Under the default key, identical reads with the same credentials
        collapse across the fleet; other credentials make their own request.
        """
        a, b = (self.instance(collapse_key=reads_per_credentials) for _ in range(2))

        def get(instance: Instance, cookie: bytes):
            headers = Headers({b"Cookie": [cookie]})
            return instance.dispatcher.handle(CallerRequest(b"GET", b"/same", headers))

        mine = [get(a, b"u=1"), get(b, b"u=1")]
        theirs = get(b, b"u=2")
        self.assertEqual(self.sent(), 2)
        for instance in [a, b]:
            for request in instance.broker.outstanding():
                cookie = dict(request.headers)[b"Cookie"]
                instance.broker.respond(request, b"200\nfor " + cookie)
        self.assertEqual([self.successResultOf(d).body for d in mine], [b"for u=1"] * 2)
        self.assertEqual(self.successResultOf(theirs).body, b"for u=2")

    def test_headers_cross(self) -> None:
        """
        A follower's callers get the holder's answer with its headers, in
        their order, as the holder's callers do.
        """
        a, b = self.instance(), self.instance()
        first, second = self.call(a), self.call(b)
        self.assertEqual(b.fleet.followed, 1)
        a.broker.respond(
            a.broker.outstanding()[0],
            b"HTTP/1.1 201 Created\r\nContent-Type: text/x-fleet\r\nSet-Cookie: a=1\r\n"
            b"Set-Cookie: b=\xff\r\nConnection: close\r\n\r\nbody",
        )
        expected = BrokerResponse(
            201,
            b"body",
            (
                (b"Content-Type", b"text/x-fleet"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=\xff"),
            ),
        )
        self.assertEqual(self.successResultOf(first), expected)
        self.assertEqual(self.successResultOf(second), expected)
        self.assertEqual(self.sent(), 1)

    def test_follower_times_out(self) -> None:
        """
        A follower's caller gets its own 504 at its own timeout; a later
        caller on the same instance still gets the holder's answer.
        """
        from fmq.errors import CallerTimeout

        a, b = self.instance(), self.instance()
        first = self.call(a)
        early = self.call(b)
        self.clock.pump([0.5] * int(TIMEOUT / 0.5))
        self.failureResultOf(first, CallerTimeout)
        self.failureResultOf(early, CallerTimeout)
        late = self.call(b)
        a.broker.respond(a.broker.outstanding()[0], b"200\nslow")
        self.assertEqual(self.successResultOf(late).body, b"slow")
        self.assertEqual(self.sent(), 1)


class SettingsTests(SynchronousTestCase):
    """
    C{[fleet]}: off by default, a Redis URL when on.
    """

    def settings(self, **fleet: object):
        from fmq.settings import DictSource, load_settings

        values = {"broker": {"type": "amqp"}, "fleet": fleet} if fleet else {}
        return load_settings(DictSource(values))

    def test_off_by_default(self) -> None:
        """
        With no registry there is no fleet: nothing connects anywhere.
        """
        from fmq.registry import make_fleet

        settings = self.settings()
        self.assertEqual((settings.fleet.registry, settings.fleet.lease), ("", 5.0))
        self.assertIsNone(make_fleet(settings, Clock()))

    def test_bad_url(self) -> None:
        """
        A registry that is not a C{redis://} URL stops the start with one line
        naming the key, and never shows its password.
        """
        from fmq.registry import make_fleet

        settings = self.settings(registry="http://user:secret@host/")
        error = self.assertRaises(ValueError, make_fleet, settings, Clock())
        self.assertIn("[fleet] registry", str(error))
        self.assertNotIn("secret", str(error))

    def test_address(self) -> None:
        """
        Host, port, database and password come from the URL.
        """
        from fmq.registry import RedisAddress

        self.assertEqual(
            RedisAddress.parse("redis://:p%40ss@example:6390/3"),
            RedisAddress("example", 6390, 3, "p@ss"),
        )
        self.assertEqual(
            RedisAddress.parse("redis://127.0.0.1"), RedisAddress("127.0.0.1", 6379, 0, None)
        )

    def test_namespace_from_settings(self) -> None:
        """
        The request queue, the collapse key and the request format are part
        of the namespace.
        """
        from fmq.registry import fleet_identity
        from fmq.settings import DictSource, load_settings

        def space(**sections: dict[str, object]) -> str:
            return namespace(fleet_identity(load_settings(DictSource(sections))))

        base = space(broker={"type": "amqp"})
        self.assertEqual(base, space(broker={"type": "amqp"}, http={"port": 9000}))
        self.assertNotEqual(base, space(broker={"type": "amqp"}, amqp={"request_queue": "x"}))
        self.assertNotEqual(
            base,
            space(
                broker={"type": "amqp"},
                service={"collapse_key": "fmq.keys.method_and_path_without_query"},
            ),
        )
        self.assertNotEqual(base, space(broker={"type": "amqp", "request_format": "http"}))
