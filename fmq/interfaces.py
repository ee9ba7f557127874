"""
The seams users replace: the broker, the settings source and the fleet's
registry.

The collapse key, a single function, is a typed callable instead
(L{fmq.keys.CollapseKey}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IService
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from twisted.internet.defer import Deferred

    from fmq.protocol import BrokerRequest, BrokerResponse

__all__ = ["IBroker", "IRegistry", "ISettingsSource"]


class IBroker(IService):
    """
    Carries broker requests to the backend and brings back its answers.

    A broker is a service: it takes requests only between C{startService} and
    C{stopService}. At stop, the Deferreds of requests still unanswered fail
    with L{fmq.errors.ShuttingDown}, and what the broker holds for them stays
    for the next start to adopt.

    Its counters are plain integers that only grow; L{fmq.metrics} reads them
    at scrape time. A broker with nothing to count leaves them at 0.
    """

    available = Attribute(
        "C{True} while the broker can take requests; C{False} while it is "
        "unreachable (directory missing, connection down) or blocked."
    )
    blocked = Attribute(
        "C{True} while the broker's server asks it to stop publishing "
        "(RabbitMQ's C{connection.blocked}, a memory or disk alarm): new "
        "requests fail at once. Always C{False} for a broker with no such state."
    )
    dropped_replies = Attribute(
        "Counter: answers that arrived for no request in flight (an unknown or "
        "already answered id; a late answer deleted unread)."
    )
    delete_retries = Attribute(
        "Counter: attempts to remove a finished request's traces (the file "
        "broker's files) that failed and were retried."
    )

    def submit(request: BrokerRequest) -> Deferred[BrokerResponse]:
        """
        Send C{request} to the backend.

        A broker that cannot carry two requests with one key at once (the file
        broker: one file name) queues the second until the first is gone,
        first come, first served.

        @return: a Deferred that fires with the backend's answer or fails with
            a L{fmq.errors.BrokerRequestFailed}: C{MalformedResponse} (and its
            kinds), C{BrokerUnavailable}, C{Overloaded}, C{RequestExpired}
            after the broker's request TTL, C{ShuttingDown}. Cancelling it is
            the same as L{withdraw}. Any other error, or an exception raised
            here, is taken for a bug in the broker (L{fmq.errors.BrokerFailed}).
        """

    def withdraw(request: BrokerRequest) -> None:
        """
        Give up C{request}: nobody waits for its answer any more.

        One not yet sent is never sent; one sent is taken back where the broker
        can (the file broker deletes the request file). Its Deferred fails with
        L{fmq.errors.Withdrawn}. Unknown or finished requests are ignored.
        """

    def in_flight() -> int:
        """
        @return: how many broker requests are sent or queued.
        """


class ISettingsSource(Interface):
    """
    Where the settings come from: an ini file, a dict, the environment.
    """

    name = Attribute("How errors name this source, e.g. the file's path.")

    def load() -> Mapping[str, Mapping[str, Any]]:
        """
        The raw settings, by section and key; values may be strings.

        @return: a mapping of section name to a mapping of key to value.
        @raise fmq.settings.SettingsError: the source cannot be read.
        """

    def base_directory() -> Path:
        """
        @return: the folder that relative paths are relative to.
        """


class IRegistry(IService):
    """
    Where fmq instances meet to collapse across a fleet (C{[fleet] registry}):
    short leases on names and answer channels, as Redis offers them.

    Every method but L{unsubscribe} and L{watch} returns a Deferred that fails
    while the registry cannot be reached. Names and channels are those
    L{fmq.fleet} makes (C{fmq:<namespace>:...}); messages are bytes, carried
    byte for byte. The contract suite is C{tests/test_registry_contract.py}.
    """

    available = Attribute("C{True} while the registry can be reached.")

    def watch(callback: Callable[[bool], None]) -> None:
        """
        Call C{callback(available)} at every change of L{available}.
        """

    def claim(name: str, token: str, milliseconds: int) -> Deferred[bool]:
        """
        Take the lease C{name} for C{token} for C{milliseconds} if nobody
        holds it (C{SET NX PX}).

        @return: a Deferred that fires with C{True} if the lease is now
            C{token}'s, C{False} if another holds it.
        """

    def renew(name: str, token: str, milliseconds: int) -> Deferred[bool]:
        """
        Extend the lease C{name} to C{milliseconds} from now, if C{token}
        still holds it.

        @return: a Deferred that fires with C{True} if it did.
        """

    def release(name: str, token: str) -> Deferred[bool]:
        """
        Give up the lease C{name} if C{token} still holds it.

        @return: a Deferred that fires with C{True} if it did.
        """

    def publish(channel: str, message: bytes) -> Deferred[None]:
        """
        Send C{message} to whoever is subscribed to C{channel} now.

        @return: a Deferred that fires once the registry has taken it.
        """

    def subscribe(channel: str, receiver: Callable[[bytes], None]) -> Deferred[None]:
        """
        Call C{receiver(message)} for every message published on C{channel}
        from when the returned Deferred fires until L{unsubscribe}.

        @return: a Deferred that fires once the subscription is in place.
        """

    def unsubscribe(channel: str, receiver: Callable[[bytes], None]) -> None:
        """
        Stop calling C{receiver} for C{channel}; unknown ones are ignored.
        """
