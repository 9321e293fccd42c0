"""
Tests for packaging and the command lines: ``python -m kongacme``, the
version (one source: ``kongacme.__version__``), usage errors, and what the
wheel contains (no test fakes, the plugin, ``py.typed``, the licence).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted import version as twisted_version
from twisted.trial.unittest import SynchronousTestCase

import kongacme
from kongacme.tap import EXIT_USAGE

from tests.daemonproc import REPO, TWISTD, child_env


def run(*args: str) -> subprocess.CompletedProcess:
    """Run this interpreter with ``args`` outside the checkout, as a user would."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=child_env(), cwd="/", timeout=120
    )


@functools.lru_cache(maxsize=None)
def wheel_names() -> tuple[str, ...]:
    """The files in the wheel ``pip wheel --no-deps .`` builds from this checkout (built once)."""
    with tempfile.TemporaryDirectory() as out:
        # From a copy of the checkout: setuptools builds in ./build, and with
        # trial --jobs two test processes building in one tree at once
        # trip over each other's files.
        source = os.path.join(out, "src")
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "_trial_temp*", ".demo", "out", "__pycache__",
            ".mypy_cache",
        ))
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", out, source],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode:
            raise RuntimeError("pip wheel failed:\n" + result.stdout + result.stderr)
        [wheel] = [name for name in os.listdir(out) if name.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(out, wheel)) as archive:
            return tuple(archive.namelist())


def top_level_definitions(path: str) -> dict[str, str]:
    """
    The functions and classes of five lines or more the Python file at
    ``path`` defines at its top level: a dump of each one's syntax tree
    with its own name left out (the same code under another name matches)
    -> its name.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if (node.end_lineno or node.lineno) - node.lineno + 1 >= 5:
                name, node.name = node.name, ""
                found[ast.dump(node)] = name
    return found


class PythonDashMTests(SynchronousTestCase):
    """
    Tests for ``python -m kongacme`` (the ``kongacme`` command).
    """

    def test_help(self) -> None:
        """``python -m kongacme --help`` prints the commands and exits 0."""
        result = run("-m", "kongacme", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("usage: kongacme"), result.stdout)
        for command in ("check-config", "certs", "issue", "renew"):
            self.assertIn(command, result.stdout)

    def test_version(self) -> None:
        """``python -m kongacme --version`` prints kongacme's version."""
        result = run("-m", "kongacme", "--version")
        self.assertEqual((result.returncode, result.stdout), (0, "kongacme %s\n" % (kongacme.__version__,)))

    def test_usage_error_first(self) -> None:
        """A usage error's first line is the error; the usage follows; exit 64."""
        result = run("-m", "kongacme", "bogus")
        self.assertEqual(result.returncode, 64)
        lines = result.stderr.splitlines()
        self.assertTrue(lines[0].startswith("kongacme: error: "), result.stderr)
        self.assertIn("bogus", lines[0])
        self.assertTrue(lines[1].startswith("usage: kongacme"), result.stderr)


class TwistdCommandLineTests(SynchronousTestCase):
    """
    Tests for ``twistd kongacme``'s version and usage errors.
    """

    def twistd(self, *args: str) -> subprocess.CompletedProcess:
        return run("-c", TWISTD, *args)

    def test_version(self) -> None:
        """``twistd kongacme --version`` prints kongacme's version (and Twisted's), exit 0."""
        result = self.twistd("kongacme", "--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout, "kongacme %s (Twisted %s)\n" % (kongacme.__version__, twisted_version.short())
        )

    def test_missing_config_error_first(self) -> None:
        """
        Without ``--config`` the first line on stderr is the error, then the
        synopsis and options; the exit status is non-zero.
        """
        result = self.twistd("-n", "kongacme")
        self.assertEqual(result.returncode, EXIT_USAGE)
        lines = result.stderr.splitlines()
        self.assertEqual(lines[0], "twistd kongacme: --config FILE is required")
        self.assertIn("Usage: twistd [options] kongacme --config FILE", lines)
        self.assertIn("--config=", result.stderr)

    def test_bad_option_error_first(self) -> None:
        """An unknown option: the error is the first line, non-zero exit."""
        result = self.twistd("-n", "kongacme", "--bogus")
        self.assertEqual(result.returncode, EXIT_USAGE)
        self.assertEqual(result.stderr.splitlines()[0], "twistd kongacme: option --bogus not recognized")

    def test_invalid_config_problems_only(self) -> None:
        """
        An invalid configuration prints its problems with their field paths
        first, without the options table (the options were right).
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.abspath(os.path.join(directory, "bad.yaml"))
        with open(path, "w") as f:
            f.write("acme:\n  account_email: a@b.test\n  rsa_key_size: 1024\n")
        result = self.twistd("-n", "kongacme", "--config", path)
        self.assertEqual(result.returncode, EXIT_USAGE)
        lines = result.stderr.splitlines()
        self.assertEqual(lines[0], "twistd kongacme: invalid configuration in %s:" % (path,))
        self.assertIn("acme.rsa_key_size: must be one of 2048, 3072, 4096", result.stderr)
        self.assertNotIn("--help", result.stderr)


class VersionTests(SynchronousTestCase):
    """
    Tests for the one source of the version.
    """

    def test_metadata_matches(self) -> None:
        """The installed distribution's version is ``kongacme.__version__``."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("kongacme")
        except PackageNotFoundError:
            raise self.skipTest("kongacme is not installed (scripts/bootstrap installs it)")
        self.assertEqual(installed, kongacme.__version__)

    def test_setup_reads_init(self) -> None:
        """setup.py has no version of its own: it reads kongacme/__init__.py."""
        with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
            setup = f.read()
        self.assertNotIn(kongacme.__version__, setup)
        self.assertIn("kongacme/__init__.py", setup)


class WheelTests(SynchronousTestCase):
    """
    Tests for the wheel ``pip wheel --no-deps .`` builds.
    """

    def setUp(self) -> None:
        if importlib.util.find_spec("pip") is None:
            raise self.skipTest("pip is not installed in this environment")

    def test_contents(self) -> None:
        """
        The wheel has the kongacme package with py.typed, the twistd plugin
        (and no __init__.py in twisted/ or twisted/plugins/, which would
        shadow Twisted's), the licence, and no tests.
        """
        names = wheel_names()
        self.assertIn("kongacme/__init__.py", names)
        self.assertIn("kongacme/__main__.py", names)
        self.assertIn("kongacme/py.typed", names)
        self.assertIn("twisted/plugins/kongacme_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertTrue([n for n in names if n.endswith(".dist-info/licenses/LICENSE")], names)
        self.assertEqual([n for n in names if n.startswith(("tests/", "bench/"))], [])
        metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
        self.assertEqual(len(metadata), 1)

    def test_no_test_fakes(self) -> None:
        """No module named like a fake (``*fake*``) is in the wheel: fakes only tests use live in tests/."""
        fakes = [n for n in wheel_names() if n.endswith(".py") and "fake" in os.path.basename(n).lower()]
        self.assertEqual(fakes, [])

    def test_no_test_only_code(self) -> None:
        """
        No module in the wheel holds a function or class of the test-only
        modules (the PROXY-protocol decoder of tests/proxyproto_decoder.py,
        the Consul fake of tests/consul_fake.py), under any name: the
        wheel's kongacme/proxy/proxyproto.py is the encoder the proxy sends
        with.
        """
        test_only: dict[str, str] = {}
        for module in ("proxyproto_decoder.py", "consul_fake.py"):
            test_only.update(top_level_definitions(os.path.join(REPO, "tests", module)))
        self.assertTrue({"parse_header", "ParsedHeader", "FakeConsul"} <= set(test_only.values()), test_only)
        shipped = [n for n in wheel_names() if n.startswith("kongacme/") and n.endswith(".py")]
        self.assertIn("kongacme/proxy/proxyproto.py", shipped)
        found = {}
        for name in shipped:
            same = [test_only[dump] for dump in top_level_definitions(os.path.join(REPO, name)) if dump in test_only]
            if same:
                found[name] = sorted(same)
        self.assertEqual(found, {})


class ScriptsTestTests(SynchronousTestCase):
    """
    Tests for scripts/test, the README's test command.
    """

    def setUp(self) -> None:
        if os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(REPO, ".venv")):
            raise self.skipTest("runs from the project's virtualenv only (scripts/bootstrap makes .venv)")

    def scripts_test(self, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        """Run scripts/test with its own TMPDIR: the result and what it left there."""
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        env = dict(os.environ, TMPDIR=tmp)
        result = subprocess.run(
            [os.path.join(REPO, "scripts", "test"), *args], capture_output=True, text=True, env=env, timeout=600
        )
        return result, os.listdir(tmp)

    def test_pass_removes_temp(self) -> None:
        """
        A passing run ends with "trial: N passed, 0 failed, 0 skipped" and
        removes trial's temporary directory.
        """
        result, left = self.scripts_test("tests.test_packaging.VersionTests.test_setup_reads_init")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.splitlines()[-1], "trial: 1 passed, 0 failed, 0 skipped")
        self.assertEqual(left, [])

    def test_failure_keeps_temp(self) -> None:
        """A failing run exits non-zero, says so in the closing line and keeps (and names) the directory."""
        result, left = self.scripts_test("tests.test_packaging.NoSuchTests")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout.splitlines()[-1], "trial: 0 passed, 1 failed, 0 skipped")
        self.assertEqual(len(left), 1)
        self.assertIn(left[0], result.stderr)
