"""
fmq: an HTTP front for a backend that only speaks through a message broker.
"""

__version__ = "0.1.0"
