"""
The ceiling fmq is measured against: a bare Klein app that answers every
method and path with a fixed body, served like fmq's front (same Site without
access log, same backlog). C{python -m fmq.tools.ceiling --port 8090}.

With C{--defer 0.03} it holds each answer and hands them all out every 30 ms,
as fmq does when a batch is answered: the same Klein app, but paying what it
costs Twisted and Klein to keep requests waiting.
"""

from __future__ import annotations

import argparse
import sys

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.web.iweb import IRequest

from fmq.web import QuietSite

BODY = b"GET /hot #1\n"


def make_app(deferred: bool) -> tuple[Klein, list[Deferred[bytes]]]:
    """
    The catch-all app, and the list its held answers wait in.
    """
    app = Klein()
    held: list[Deferred[bytes]] = []

    @app.route("/", branch=True, strict_slashes=False, merge_slashes=False)
    def answer(request: IRequest) -> bytes | Deferred[bytes]:
        request.setHeader(b"content-length", b"%d" % len(BODY))
        if not deferred:
            return BODY
        waiting: Deferred[bytes] = Deferred()
        held.append(waiting)
        return waiting

    return app, held


def main(argv: list[str] | None = None) -> int:
    """
    C{python -m fmq.tools.ceiling}: serve the app until interrupted.
    """
    parser = argparse.ArgumentParser(prog="python -m fmq.tools.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--defer",
        type=float,
        default=0.0,
        help="hold answers and hand them out every so many seconds",
    )
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    app, held = make_app(args.defer > 0)
    if args.defer > 0:

        def hand_out() -> None:
            answers = held[:]
            del held[:]
            for waiting in answers:
                waiting.callback(BODY)

        LoopingCall(hand_out).start(args.defer)
    endpoint = TCP4ServerEndpoint(reactor, args.port, backlog=args.backlog, interface="127.0.0.1")
    endpoint.listen(QuietSite(app.resource(), reactor=reactor))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
