"""
Import an object named by a dotted path in the configuration.
"""

from __future__ import annotations

from importlib import import_module


def import_dotted(dotted: str) -> object:
    """
    The object named by C{dotted}, e.g. C{fmq.keys.method_and_path}.

    @raise ValueError: the name is not a dotted path, cannot be imported, or
        does not name a callable.
    """
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"not a dotted path: {dotted!r}")
    try:
        found = getattr(import_module(module_name), attribute)
    except Exception as e:  # whatever importing the user's module raises
        raise ValueError(f"cannot import {dotted!r}: {type(e).__name__}: {e}") from None
    if not callable(found):
        raise ValueError(f"{dotted!r} is not callable")
    return found
