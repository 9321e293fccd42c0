"""
attrs validators shared by the classes that hold collaborators (house rule
2: fields checked with ``provides(IStorage)``).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from zope.interface import Interface


def provides(interface: type[Interface]) -> Callable[[Any, attrs.Attribute, Any], None]:
    """
    An attrs validator: the value must provide ``interface``.

    :raises TypeError: naming the field and the interface, for anything else.
    """

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not interface.providedBy(value):
            raise TypeError(f"{attribute.name} must provide {interface.__name__}, not {value!r}")

    return check
