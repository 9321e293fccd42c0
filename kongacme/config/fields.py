"""
A small declarative validation layer, part one: the parse context with path
tracking, and the kinds of values (strings, booleans, integers and numbers
with ranges, enums, arrays, file paths). Records are in
:mod:`kongacme.config.records`.

Every problem found is collected in a :class:`Context` as a ``(path, message)``
pair (``acme.storage_config.redis.port``, ``routes[2].upstream``) so that a
configuration with many mistakes is reported in one go.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs


class _Sentinel:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Returned by a kind when the value had problems (already reported).
INVALID: Any = _Sentinel("INVALID")
#: Field default: the field must be given (a non-null value).
REQUIRED: Any = _Sentinel("REQUIRED")


class Invalid(Exception):
    """
    Raised by a validation function; the argument is the human message.
    """


def join(path: str, name: str) -> str:
    """
    The path of field ``name`` inside ``path``: ``join("acme", "storage")``
    is ``"acme.storage"``.
    """
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    """
    The path of element ``i`` of the array at ``path``: ``routes[2]``.
    """
    return f"{path}[{i}]"


@attrs.define
class Context:
    """
    What a parse run collects.

    :ivar base_dir: directory that relative file paths are resolved against.
    :ivar problems: ``(path, message)`` pairs, in the order found.
    :ivar warnings: human strings, each starting with the field path.
    """

    base_dir: str
    problems: list[tuple[str, str]] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)

    def problem(self, path: str, message: str) -> Any:
        """
        Record a problem; returns :data:`INVALID` for convenience.
        """
        self.problems.append((path, message))
        return INVALID

    def warn(self, path: str, message: str) -> None:
        """
        Record a warning about the field at ``path``.
        """
        self.warnings.append(f"{path}: {message}" if path else message)


class Kind:
    """
    How to check and convert one (non-null) value.
    """

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        """
        Check ``value`` and return the converted value, or report problems to
        ``ctx`` and return :data:`INVALID`.
        """
        raise NotImplementedError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_message(lo: float | None, hi: float | None, lo_exclusive: bool) -> str:
    if lo is not None and hi is not None and not lo_exclusive:
        return f"must be between {lo} and {hi}"
    parts = []
    if lo is not None:
        parts.append(f"greater than {lo}" if lo_exclusive else f"at least {lo}")
    if hi is not None:
        parts.append(f"at most {hi}")
    return "must be " + " and ".join(parts)


@attrs.frozen
class Str(Kind):
    """
    A string; empty strings are refused unless ``allow_empty`` (Kong's
    ``len_min = 0``).
    """

    allow_empty: bool = False

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if not isinstance(value, str):
            return ctx.problem(path, "must be a string")
        if not value and not self.allow_empty:
            return ctx.problem(path, "must not be empty")
        if value.startswith("{vault://"):
            # Kong "referenceable" fields may hold a secret reference that only
            # Kong can resolve.
            return ctx.problem(path, "Kong vault references are not supported; write the value itself")
        return value


@attrs.frozen
class Bool(Kind):
    """
    ``true`` or ``false``; strings such as ``"true"`` are refused.
    """

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if not isinstance(value, bool):
            return ctx.problem(path, "must be true or false")
        return value


@attrs.frozen
class Int(Kind):
    """
    An integer within ``[min, max]`` (either bound optional). A float with an
    integral value (``6379.0``, as some JSON encoders write) is accepted.
    """

    min: int | None = None
    max: int | None = None

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value):
            return ctx.problem(path, "must be an integer")
        assert isinstance(value, int)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return ctx.problem(path, _range_message(self.min, self.max, False))
        return value


@attrs.frozen
class Num(Kind):
    """
    A number (stored as ``float``) within the given bounds.

    :ivar min_exclusive: the lower bound itself is refused ("greater than").
    """

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if not _is_number(value):
            return ctx.problem(path, "must be a number")
        assert isinstance(value, (int, float))
        low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        if low or (self.max is not None and value > self.max):
            return ctx.problem(path, _range_message(self.min, self.max, self.min_exclusive))
        return float(value)


@attrs.frozen
class OneOf(Kind):
    """
    One of a fixed set of values (strings or numbers), compared by equality;
    the stored value is the matching choice.
    """

    choices: tuple[object, ...]

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if not isinstance(value, bool):
            for choice in self.choices:
                if type(value) is type(choice) or (_is_number(value) and _is_number(choice)):
                    if value == choice:
                        return choice
        return ctx.problem(path, "must be one of " + ", ".join(str(c) for c in self.choices))


@attrs.frozen
class ListOf(Kind):
    """
    An array whose elements are all of kind ``item``, stored as a tuple.

    :ivar single_ok: a lone (non-list) value is taken as a 1-element list.
    :ivar non_empty: the empty list is refused.
    """

    item: Kind
    single_ok: bool = False
    non_empty: bool = False

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if self.single_ok and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return ctx.problem(path, "must be a list")
        if self.non_empty and not value:
            return ctx.problem(path, "must not be empty")
        out = []
        for i, element in enumerate(value):
            where = index(path, i)
            if element is None:
                out.append(ctx.problem(where, "must not be null"))
            else:
                out.append(self.item.parse(element, ctx, where))
        if any(v is INVALID for v in out):
            return INVALID
        return tuple(out)


@attrs.frozen
class Then(Kind):
    """
    ``kind``, then ``check(value)`` which returns the final value or raises
    :class:`Invalid` with the message.
    """

    kind: Kind
    check: Callable[[Any], Any]

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        value = self.kind.parse(value, ctx, path)
        if value is INVALID:
            return INVALID
        try:
            return self.check(value)
        except Invalid as e:
            return ctx.problem(path, str(e))


@attrs.frozen
class FilePath(Kind):
    """
    A file system path, resolved against :attr:`Context.base_dir` and stored
    absolute.

    :ivar must_exist: the path must name a readable regular file now.
    :ivar allow_dash: ``"-"`` (standard output) is kept as it is.
    """

    must_exist: bool = False
    allow_dash: bool = False

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        value = Str().parse(value, ctx, path)
        if value is INVALID or (self.allow_dash and value == "-"):
            return value
        resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(value)))
        if self.must_exist:
            problem = file_problem(resolved)
            if problem:
                return ctx.problem(path, problem)
        return resolved


def file_problem(path: str) -> str | None:
    """
    Why ``path`` cannot be read as a regular file, or ``None`` if it can.
    """
    if not os.path.exists(path):
        return f"file not found: {path}"
    if not os.path.isfile(path):
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"file not readable: {path}"
    return None
