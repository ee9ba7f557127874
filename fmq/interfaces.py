"""
The seams users replace: the broker and the settings source.

The collapse key, a single function, is a typed callable instead
(L{fmq.keys.CollapseKey}).
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IBroker(IService):
    """
    Carries broker requests to the backend and brings back its answers.

    A broker is a service: it takes requests only between C{startService} and
    C{stopService}. At stop, the Deferreds of requests still unanswered fail
    with L{fmq.errors.ShuttingDown}, and what the broker holds for them stays
    for the next start to adopt.
    """

    available = Attribute(
        "C{True} while the broker can take requests; C{False} while it is "
        "unreachable (directory missing, connection down)."
    )

    def submit(request):
        """
        Send C{request} to the backend.

        A broker that cannot carry two requests with one key at once (the file
        broker: one file name) queues the second until the first is gone,
        first come, first served.

        @param request: the request.
        @type request: L{fmq.protocol.BrokerRequest}

        @return: a Deferred that fires with the L{fmq.protocol.BrokerResponse}
            or fails with a L{fmq.errors.BrokerRequestFailed}: C{MalformedResponse},
            C{BrokerUnavailable}, C{RequestExpired} after the broker's request
            TTL, C{ShuttingDown}. Cancelling it is the same as L{withdraw}.
        """

    def withdraw(request):
        """
        Give up C{request}: nobody waits for its answer any more.

        One not yet sent is never sent; one sent is taken back where the broker
        can (the file broker deletes the request file). Its Deferred fails with
        L{fmq.errors.Withdrawn}. Unknown or finished requests are ignored.
        """

    def in_flight():
        """
        @return: how many broker requests are sent or queued.
        @rtype: L{int}
        """


class ISettingsSource(Interface):
    """
    Where the settings come from: an ini file, a dict, the environment.
    """

    name = Attribute("How errors name this source, e.g. the file's path.")

    def load():
        """
        The raw settings, by section and key; values may be strings.

        @return: a mapping of section name to a mapping of key to value.
        @raise fmq.settings.SettingsError: the source cannot be read.
        """

    def base_directory():
        """
        @return: the folder that relative paths are relative to.
        @rtype: L{pathlib.Path}
        """
