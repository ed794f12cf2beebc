"""How an error message shows a value the caller passed.

``repr`` is right for numbers, strings, tuples and arrays, but an object without a repr of its
own shows as ``<module.Class object at 0x7f...>``: an address tells the reader nothing, and the
next run prints another one. Such a value is shown by its type instead.
"""
from __future__ import annotations

import re

# CPython's default repr, and the reprs of functions, methods, modules' objects ...: "<... at 0x...>"
_ADDRESS = re.compile(r"<(?:[^<>]|<\w+>)*? at 0x[0-9a-fA-F]+>")


def shown(value, limit: int = 120) -> str:
    """``value`` for an error message: its repr, cut at ``limit`` characters, with every
    ``<... at 0x...>`` part replaced by the type's name.

    >>> shown((3, "same"))
    "(3, 'same')"
    >>> class Options: pass
    >>> shown(Options())
    'an object of type Options'
    >>> shown([1, Options()])
    '[1, <Options>]'
    """
    r = repr(value)
    if _ADDRESS.fullmatch(r):
        return f"an object of type {type(value).__name__}"
    if _ADDRESS.search(r):
        r = _ADDRESS.sub(lambda m: f"<{_name_in(m.group(0))}>", r)
    return r if len(r) <= limit else r[:limit] + "..."


def _name_in(address_repr: str) -> str:
    """``Options`` from ``<mod.Options object at 0x...>``, ``function f`` from ``<function f at 0x...>``."""
    inner = address_repr[1:address_repr.rindex(" at 0x")]
    if inner.endswith(" object"):
        inner = inner[:-len(" object")]
    words = inner.split(" ")
    words[-1] = words[-1].rsplit(".", 1)[-1]  # the class or function, not its module or scope
    return " ".join(words)
