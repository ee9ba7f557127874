"""
The C{twistd fmq} plugin.
"""

from twisted.application.service import ServiceMaker

fmq = ServiceMaker(
    "fmq",
    "fmq.tap",
    "HTTP front for a backend reached through a message broker",
    "fmq",
)
