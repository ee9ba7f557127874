"""
The ways a broker request can end without an answer, each with its HTTP status.
"""

import errno

__all__ = [
    "OVERLOAD_ERRNOS",
    "BrokerRequestFailed",
    "MalformedResponse",
    "BrokerFailed",
    "NotARegularFile",
    "AnswerTooLarge",
    "BrokerUnavailable",
    "ShuttingDown",
    "Overloaded",
    "RequestExpired",
    "Withdrawn",
    "CallerTimeout",
    "OverCapacity",
]

#: errno values that mean this process is short of descriptors.
OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


class BrokerRequestFailed(Exception):
    """
    Base class: a broker request ended without a usable answer.

    @cvar status: the HTTP status the caller gets.
    @cvar reason: a short phrase for the caller's body and the operator's log.
    @cvar kind: its label in the metrics (C{fmq_errors_total{kind=...}}).
    """

    status = 500
    reason = "internal error"
    kind = "internal"


class MalformedResponse(BrokerRequestFailed):
    """
    The backend's answer is not in the response format.
    """

    status = 502
    reason = "malformed response from the backend"
    kind = "malformed"


class BrokerFailed(BrokerRequestFailed):
    """
    The broker itself failed: its C{submit} raised, returned no Deferred, or
    failed with an error that is not a L{BrokerRequestFailed}. A bug in the
    broker, logged with its traceback.
    """

    status = 502
    reason = "the broker failed"
    kind = "broker_failed"


class NotARegularFile(MalformedResponse):
    """
    The backend's answer is a symbolic link, a FIFO, a directory or a device:
    it is removed unread (a link, never its target).
    """

    reason = "the backend's answer is not a regular file"


class AnswerTooLarge(MalformedResponse):
    """
    The backend's answer is larger than C{max_answer_bytes}: it is removed unread.
    """

    reason = "the backend's answer is larger than this service accepts"
    kind = "too_large"


class BrokerUnavailable(BrokerRequestFailed):
    """
    The broker cannot take requests now (directory missing, not writable, full).
    """

    status = 503
    reason = "broker unavailable"
    kind = "unavailable"


class ShuttingDown(BrokerRequestFailed):
    """
    The service is stopping; the request stays for the next start to adopt.
    """

    status = 503
    reason = "service shutting down"
    kind = "shutting_down"


class Overloaded(BrokerRequestFailed):
    """
    The service itself is short of a resource (file descriptors), not the broker.
    """

    status = 503
    reason = "service overloaded"
    kind = "overloaded"


class RequestExpired(BrokerRequestFailed):
    """
    The broker request stayed unanswered for C{request_ttl} and was withdrawn.
    """

    status = 504
    reason = "no answer from the backend within the request TTL"
    kind = "expired"


class Withdrawn(BrokerRequestFailed):
    """
    The broker request was withdrawn because nobody waits for it any more.
    """

    status = 504
    reason = "request withdrawn"
    kind = "withdrawn"


class CallerTimeout(BrokerRequestFailed):
    """
    This caller waited C{request_timeout}; the broker request goes on for others.
    """

    status = 504
    reason = "no answer from the backend within the request timeout"
    kind = "timeout"


class OverCapacity(BrokerRequestFailed):
    """
    C{max_waiting} callers already wait; this one is turned away to protect memory.
    """

    status = 503
    reason = "too many callers waiting"
    kind = "over_capacity"


class BodyTooLarge(BrokerRequestFailed):
    """
    The caller's request body is larger than C{[http] max_body}; it never
    reaches the broker.
    """

    status = 413
    reason = "request body too large"
    kind = "body_too_large"
