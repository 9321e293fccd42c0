"""
Tests for kongacme.config.fields: the parse context, paths and the kinds of
values.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config.fields import (
    INVALID,
    Bool,
    Context,
    FilePath,
    Int,
    Invalid,
    Kind,
    ListOf,
    Num,
    OneOf,
    Str,
    Then,
    index,
    join,
)


def run(kind: Kind, value: object, base_dir: str = "/base") -> tuple[Any, Context]:
    """
    Parse ``value`` with ``kind`` at path ``x``.
    """
    ctx = Context(base_dir)
    return kind.parse(value, ctx, "x"), ctx


class ScalarKindTests(SynchronousTestCase):
    """
    Tests for Str, Bool, Int, Num, OneOf, Then and FilePath.
    """

    def test_str(self) -> None:
        """
        Str takes non-empty strings, or empty ones with allow_empty.
        """
        self.assertEqual(run(Str(), "v")[0], "v")
        self.assertEqual(run(Str(), "")[1].problems, [("x", "must not be empty")])
        self.assertEqual(run(Str(allow_empty=True), "")[0], "")
        value, ctx = run(Str(), 3)
        self.assertIs(value, INVALID)
        self.assertEqual(ctx.problems, [("x", "must be a string")])

    def test_bool(self) -> None:
        """
        Bool takes only booleans.
        """
        self.assertIs(run(Bool(), False)[0], False)
        for bad in ("true", 1, 0, None):
            self.assertEqual(run(Bool(), bad)[1].problems, [("x", "must be true or false")])

    def test_int(self) -> None:
        """
        Int takes integers (and integral floats), not booleans, within its
        bounds.
        """
        self.assertEqual(run(Int(), 7.0)[0], 7)
        self.assertIsInstance(run(Int(), 7.0)[0], int)
        for bad in (True, 7.5, "7"):
            self.assertEqual(run(Int(), bad)[1].problems, [("x", "must be an integer")])
        self.assertEqual(run(Int(1, 5), 6)[1].problems, [("x", "must be between 1 and 5")])
        self.assertEqual(run(Int(min=1), 0)[1].problems, [("x", "must be at least 1")])
        self.assertEqual(run(Int(max=5), 6)[1].problems, [("x", "must be at most 5")])

    def test_num(self) -> None:
        """
        Num takes ints and floats (stored as float), exclusive lower bounds
        included.
        """
        value = run(Num(), 3)[0]
        self.assertEqual((value, type(value)), (3.0, float))
        self.assertEqual(run(Num(), False)[1].problems, [("x", "must be a number")])
        self.assertEqual(run(Num(min=0, min_exclusive=True), 0)[1].problems, [("x", "must be greater than 0")])
        self.assertEqual(run(Num(min=0, min_exclusive=True), 0.001)[0], 0.001)
        self.assertEqual(
            run(Num(min=0, max=1, min_exclusive=True), 2)[1].problems, [("x", "must be greater than 0 and at most 1")]
        )

    def test_one_of(self) -> None:
        """
        OneOf compares values of the same kind and stores the choice.
        """
        kind = OneOf((2048, 4096))
        self.assertEqual(run(kind, 2048.0)[0], 2048)
        self.assertIsInstance(run(kind, 2048.0)[0], int)
        for bad in ("2048", True, 1024):
            self.assertEqual(run(kind, bad)[1].problems, [("x", "must be one of 2048, 4096")])
        self.assertEqual(run(OneOf(("a", "b")), "c")[1].problems, [("x", "must be one of a, b")])

    def test_then(self) -> None:
        """
        Then runs a check after the kind; Invalid becomes a problem.
        """

        def upper(value: str) -> str:
            if value == "no":
                raise Invalid("said no")
            return value.upper()

        self.assertEqual(run(Then(Str(), upper), "yes")[0], "YES")
        self.assertEqual(run(Then(Str(), upper), "no")[1].problems, [("x", "said no")])
        # The check does not run on a value the kind refused.
        self.assertEqual(run(Then(Str(), upper), 1)[1].problems, [("x", "must be a string")])

    def test_file_path(self) -> None:
        """
        FilePath resolves against the base directory; "-" is kept with
        allow_dash; must_exist checks the file.
        """
        self.assertEqual(run(FilePath(), "a/../b.pem")[0], "/base/b.pem")
        self.assertEqual(run(FilePath(), "/abs/c.pem")[0], "/abs/c.pem")
        self.assertEqual(run(FilePath(allow_dash=True), "-")[0], "-")
        self.assertEqual(run(FilePath(), "-")[0], "/base/-")
        self.assertEqual(run(FilePath(), "~/k.pem")[0], os.path.expanduser("~/k.pem"))
        here = os.path.abspath(__file__)
        self.assertEqual(run(FilePath(must_exist=True), os.path.basename(here), os.path.dirname(here))[0], here)
        self.assertEqual(
            run(FilePath(must_exist=True), "nope.pem")[1].problems, [("x", "file not found: /base/nope.pem")]
        )


class ListOfTests(SynchronousTestCase):
    """
    Tests for ListOf.
    """

    def test_tuple(self) -> None:
        """
        A list becomes a tuple; each element is checked at its index.
        """
        self.assertEqual(run(ListOf(Int()), [1, 2])[0], (1, 2))
        value, ctx = run(ListOf(Int()), [1, "2", None])
        self.assertIs(value, INVALID)
        self.assertEqual(ctx.problems, [("x[1]", "must be an integer"), ("x[2]", "must not be null")])

    def test_single_and_empty(self) -> None:
        """
        single_ok takes a lone value; non_empty refuses [].
        """
        self.assertEqual(run(ListOf(Str(), single_ok=True), "a")[0], ("a",))
        self.assertEqual(run(ListOf(Str()), "a")[1].problems, [("x", "must be a list")])
        self.assertEqual(run(ListOf(Str(), non_empty=True), [])[1].problems, [("x", "must not be empty")])


class PathTests(SynchronousTestCase):
    """
    Tests for join, index and Context.warn.
    """

    def test_paths(self) -> None:
        """
        Paths are dotted names with [i] indexes; the root is "".
        """
        self.assertEqual(join("", "acme"), "acme")
        self.assertEqual(join("acme", "storage_config"), "acme.storage_config")
        self.assertEqual(join(index("routes", 2), "upstream"), "routes[2].upstream")

    def test_warn(self) -> None:
        """
        Warnings are "path: message" strings.
        """
        ctx = Context("/")
        ctx.warn("a.b", "careful")
        ctx.warn("", "general")
        self.assertEqual(ctx.warnings, ["a.b: careful", "general"])
