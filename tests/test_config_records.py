"""
Tests for kongacme.config.records: mappings with typed fields, defaults,
checks, shorthands and tolerated fields.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from kongacme.config.fields import INVALID, REQUIRED, Context, Int, Str, Then, join
from kongacme.config.hosts import host_port
from kongacme.config.records import EMPTY, Default, Field, Record, Shorthand
from tests.test_config_fields import run


@attrs.frozen
class Inner:
    a: int = 1
    b: str = "b"


@attrs.frozen
class Outer:
    name: str
    inner: Inner
    host: str = ""
    port: int = 0


INNER = Record(Inner, (Field("a", Int(0, 9), 1), Field("b", Str(), "b")))


class RecordTests(SynchronousTestCase):
    """
    Tests for Record.
    """

    def test_defaults_and_nulls(self) -> None:
        """
        Absent and null keys take the field default; EMPTY builds a record of
        defaults; a Default is parsed.
        """
        kind = Record(
            Outer,
            (
                Field("name", Then(Str(), str.upper), Default("n")),
                Field("inner", INNER, EMPTY),
            ),
        )
        self.assertEqual(run(kind, {"inner": None})[0], Outer("N", Inner(1, "b")))
        self.assertEqual(run(kind, {"name": "m", "inner": {"a": 3}})[0], Outer("M", Inner(3, "b")))

    def test_required_unknown_and_shape(self) -> None:
        """
        Required fields, unknown keys and non-mappings are reported with
        their paths; every problem is collected.
        """
        kind = Record(Outer, (Field("name", Str(), REQUIRED), Field("inner", INNER, EMPTY)))
        value, ctx = run(kind, {"inner": {"a": 10, "c": 1}, "zz": 2, 3: 4})
        self.assertIs(value, INVALID)
        self.assertEqual(
            ctx.problems,
            [
                ("x.zz", "unknown field"),
                ("x.3", "unknown field"),
                ("x.name", "required"),
                ("x.inner.c", "unknown field"),
                ("x.inner.a", "must be between 0 and 9"),
            ],
        )
        self.assertEqual(run(kind, [1])[1].problems, [("x", "must be a mapping")])
        self.assertEqual(run(INNER, [])[0], Inner())

    def test_tuple_attr(self) -> None:
        """
        A field with a tuple attr spreads its value over several attributes.
        """
        kind = Record(
            Outer,
            (Field("name", Str(), "n"), Field("inner", INNER, EMPTY),
             Field("to", Then(Str(), host_port), REQUIRED, attr=("host", "port"))),
        )
        self.assertEqual(run(kind, {"to": "h:1"})[0], Outer("n", Inner(), "h", 1))

    def test_constants_hints_checks(self) -> None:
        """
        constants are passed to the class; hints extend "unknown field";
        checks run even when fields are invalid.
        """
        seen = []

        def check(values: dict[str, Any], ctx: Context, path: str) -> None:
            seen.append(dict(values))
            ctx.problem(join(path, "b"), "checked")

        kind = Record(Inner, (Field("a", Int(), 1),), constants={"b": "const"}, hints={"c": "try a"}, checks=(check,))
        self.assertEqual(
            run(kind, {"a": "x", "c": 1})[1].problems,
            [("x.c", "unknown field (try a)"), ("x.a", "must be an integer"), ("x.b", "checked")],
        )
        self.assertEqual(seen, [{"a": INVALID, "b": "const"}])

    def test_tolerated(self) -> None:
        """
        Tolerated keys are ignored silently when null, empty or at their Kong
        default, else with a warning.
        """
        kind = Record(
            Inner, (Field("a", Int(), 1),), tolerated={"t": 5, "u": None, "v": {"on": True}}
        )
        value, ctx = run(kind, {"t": 5, "u": [], "v": {"on": True, "other": None}})
        self.assertEqual((value, ctx.warnings), (Inner(), []))
        value, ctx = run(kind, {"t": 6, "u": ["x"], "v": {"on": False}})
        self.assertEqual(value, Inner())
        self.assertEqual(
            ctx.warnings,
            [f"x.{k}: not supported by kongacme; ignored" for k in ("t", "u", "v")],
        )

    def test_shorthand(self) -> None:
        """
        A shorthand fills its target (creating parents), warns, accepts an
        equal echo silently, and refuses a different value.
        """
        kind = Record(
            Outer,
            (Field("name", Str(), "n"), Field("inner", INNER, EMPTY)),
            shorthands=(Shorthand("old_a", Int(), ("inner", "a")), Shorthand("old_name", Str(), ("name",))),
        )
        value, ctx = run(kind, {"old_a": 4, "old_name": None})
        self.assertEqual(value, Outer("n", Inner(4, "b")))
        self.assertEqual(ctx.warnings, ["x.old_a: deprecated, use x.inner.a instead"])
        value, ctx = run(kind, {"old_a": 4, "inner": {"a": 4}})
        self.assertEqual((value, ctx.warnings), (Outer("n", Inner(4, "b")), []))
        value, ctx = run(kind, {"old_name": "p", "name": "q"})
        self.assertEqual(
            ctx.problems, [("x.old_name", "conflicts with x.name (deprecated and new field set to different values)")]
        )
        # A target parent that is not a mapping is reported by the field.
        self.assertEqual(run(kind, {"old_a": 4, "inner": 3})[1].problems, [("x.inner", "must be a mapping")])
