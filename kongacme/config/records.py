"""
A small declarative validation layer, part two: records (mappings with a
fixed set of typed fields, defaults, cross-field checks, and Kong's
deprecated and edition-specific fields).

``None`` (YAML/JSON ``null``) always means "use the default": Kong's Admin API
returns every field of a plugin config, with ``null`` for unset ones, and such
a config must load verbatim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from kongacme.config.fields import INVALID, REQUIRED, Context, Kind, join


@attrs.frozen
class Default:
    """
    A field default written as configuration text, parsed like a given value
    (so a default path is resolved, a default record gets its own defaults).
    """

    raw: object


#: Field default: a record made of its own defaults.
EMPTY = Default({})


@attrs.frozen
class Field:
    """
    One key of a mapping.

    :ivar name: the key in the YAML/JSON.
    :ivar kind: how to check its (non-null) value.
    :ivar default: used when the key is absent or null: a value, or
        :data:`REQUIRED`, or a :class:`Default` to parse (:data:`EMPTY`: a
        record of defaults).
    :ivar attr: attribute name(s) on the model; a tuple spreads a tuple
        value over several attributes (``upstream`` → host and port).
    """

    name: str
    kind: Kind
    default: Any = None
    attr: str | tuple[str, ...] | None = None


@attrs.frozen
class Shorthand:
    """
    A deprecated key that Kong still accepts and maps onto a new field.

    :ivar name: the deprecated key.
    :ivar kind: how to check its value.
    :ivar target: the key path of the new field inside the same record.
    """

    name: str
    kind: Kind
    target: tuple[str, ...]


def _unset(value: object, default: object) -> bool:
    if value is None or value == default:
        return True
    if isinstance(value, (list, tuple)) and not value and default is None:
        return True
    if isinstance(value, Mapping):
        defaults = default if isinstance(default, Mapping) else {}
        return all(_unset(v, defaults.get(k)) for k, v in value.items())
    return False


#: A cross-field check: ``check(values, ctx, path)`` reports problems to ctx.
#: It runs even when some values are :data:`INVALID` (see :func:`valid`), so
#: that its problems are reported together with the others.
Check = Callable[[dict[str, Any], Context, str], None]


def valid(values: Mapping[str, Any], *names: str) -> bool:
    """
    Whether none of the named parsed values is :data:`INVALID`.
    """
    return all(values[name] is not INVALID for name in names)


@attrs.frozen
class Record(Kind):
    """
    A mapping with a fixed set of keys, built into the attrs class ``cls``.

    :ivar tolerated: keys some Kong version defines that kongacme does not
        use, each with Kong's default; a value other than null or that default
        is recorded as a warning, the key is otherwise ignored.
    :ivar shorthands: deprecated keys mapped onto new ones (Kong's
        ``shorthand_fields``).
    :ivar checks: cross-field checks run on the parsed attribute values.
    :ivar constants: extra attribute values passed to ``cls``.
    :ivar hints: extra text for the "unknown field" message of given keys.
    """

    cls: Callable[..., Any]
    fields: tuple[Field, ...]
    tolerated: Mapping[str, object] = attrs.field(factory=dict)
    shorthands: tuple[Shorthand, ...] = ()
    checks: tuple[Check, ...] = ()
    constants: Mapping[str, object] = attrs.field(factory=dict)
    hints: Mapping[str, str] = attrs.field(factory=dict)

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if isinstance(value, list) and not value:
            # Lua has one empty table for both; Kong may encode an empty
            # record (storage_config.kong) as [].
            value = {}
        if not isinstance(value, Mapping):
            return ctx.problem(path, "must be a mapping")
        before = len(ctx.problems)
        data = dict(value)
        for shorthand in self.shorthands:
            self._apply_shorthand(shorthand, data, ctx, path)
        known = {f.name for f in self.fields}
        for key in data:
            if key in known:
                continue
            where = join(path, str(key))
            if key in self.tolerated:
                if not _unset(data[key], self.tolerated[key]):
                    ctx.warn(where, "not supported by kongacme; ignored")
            else:
                hint = self.hints.get(str(key))
                ctx.problem(where, f"unknown field ({hint})" if hint else "unknown field")
        values: dict[str, Any] = dict(self.constants)
        for f in self.fields:
            where = join(path, f.name)
            raw = data.get(f.name)
            if raw is not None:
                parsed = f.kind.parse(raw, ctx, where)
            elif f.default is REQUIRED:
                parsed = ctx.problem(where, "required")
            elif isinstance(f.default, Default):
                parsed = f.kind.parse(f.default.raw, ctx, where)
            else:
                parsed = f.default
            if isinstance(f.attr, tuple):
                if parsed is not INVALID:
                    values.update(zip(f.attr, parsed))
            else:
                values[f.attr or f.name] = parsed
        for check in self.checks:
            check(values, ctx, path)
        if len(ctx.problems) != before:
            return INVALID
        return self.cls(**values)

    def _apply_shorthand(self, shorthand: Shorthand, data: dict[Any, Any], ctx: Context, path: str) -> None:
        if shorthand.name not in data:
            return
        value = data.pop(shorthand.name)
        if value is None:
            return
        where = join(path, shorthand.name)
        if shorthand.kind.parse(value, ctx, where) is INVALID:
            return
        # The raw value moves, so that it is compared with the raw new field
        # and then parsed (normalised) by that field's kind.
        target_path = join(path, ".".join(shorthand.target))
        parent: dict[Any, Any] = data
        for key in shorthand.target[:-1]:
            child = parent.get(key)
            if child is None:
                child = parent[key] = {}
            elif not isinstance(child, Mapping):
                return  # the new field's own check reports it
            else:
                child = parent[key] = dict(child)
            parent = child
        current = parent.get(shorthand.target[-1])
        if current is None:
            parent[shorthand.target[-1]] = value
            ctx.warn(where, f"deprecated, use {target_path} instead")
        elif current != value:
            # Kong's Admin API echoes deprecated fields next to the new ones,
            # so equal values are normal; different ones are ambiguous.
            ctx.problem(where, f"conflicts with {target_path} (deprecated and new field set to different values)")

