"""
The ceiling fmq is measured against: a bare Klein app that answers every
method and path with a fixed body, served like fmq's front (same Site without
access log, same backlog). C{python -m fmq.ceiling --port 8090}.
"""

from __future__ import annotations

import argparse
import sys

from klein import Klein
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.iweb import IRequest

from fmq.web import QuietSite

app = Klein()
BODY = b"GET /hot #1\n"


@app.route("/", branch=True, strict_slashes=False, merge_slashes=False)
def answer(request: IRequest) -> bytes:
    """
    A fixed body, with Content-Length, like fmq's answers.
    """
    request.setHeader(b"content-length", b"%d" % len(BODY))
    return BODY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmq.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    endpoint = TCP4ServerEndpoint(reactor, args.port, backlog=args.backlog, interface="127.0.0.1")
    endpoint.listen(QuietSite(app.resource(), reactor=reactor))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
