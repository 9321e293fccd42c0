"""
The ``kongacme`` command's implementation.

Exit codes: 0 done; 1 the daemon refused or failed (its message is
printed), or the configuration file is invalid; 2 the Admin API could not
be reached (or what answered is not kongacme's Admin API); 64 usage error.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

DEFAULT_ADMIN = "http://127.0.0.1:8001"
TOKEN_ENV = "KONGACME_ADMIN_TOKEN"
ADMIN_ENV = "KONGACME_ADMIN"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 64
#: The Admin API's certificate times (UTC).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class Unreachable(Exception):
    """The Admin API did not answer, or what answered is not it."""


class _Usage(Exception):
    """A usage error; the text to print."""


class _Help(Exception):
    """``--help``; the text to print."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing and exiting (so run() owns the streams)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # The error first: it is what the user has to read.
        raise _Usage("%s: error: %s\n%s" % (self.prog, message, self.format_usage()))

    def print_help(self, file: Any = None) -> None:
        raise _Help(self.format_help())

    def exit(self, status: int = 0, message: Optional[str] = None) -> None:  # type: ignore[override]
        raise _Usage(message or "")


class _Version(argparse.Action):
    """``--version``: print kongacme's version (through run()'s streams) and exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: Optional[str] = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        from kongacme import __version__

        raise _Help("kongacme %s\n" % (__version__,))


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options, then a command."""
    parser = _Parser(
        prog="kongacme",
        description="Check kongacme configuration files and drive a running daemon through its Admin API.",
        epilog="Exit codes: 0 done, 1 refused/failed or invalid configuration, 2 Admin API unreachable, "
        "64 usage error.",
    )
    parser.add_argument("--version", action=_Version, help="print kongacme's version and exit")
    parser.add_argument("--admin", metavar="URL", default=None,
                        help="the Admin API (default: $%s or %s)" % (ADMIN_ENV, DEFAULT_ADMIN))
    parser.add_argument("--token", default=None,
                        help="bearer token for the Admin API (default: $%s)" % (TOKEN_ENV,))
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for an answer (issuance can take a while; default 120)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    check = commands.add_parser("check-config", help="validate a configuration file (no daemon needed)")
    check.add_argument("file")
    certs = commands.add_parser("certs", help="list the stored certificates and their renewal")
    certs.add_argument("--invalid-only", action="store_true", help="only certificates not valid now")
    certs.add_argument("--json", action="store_true", help="print the Admin API's JSON as it is")
    issue = commands.add_parser("issue", help="order a certificate for HOST now (POST /acme)")
    issue.add_argument("host")
    renew = commands.add_parser(
        "renew", help="renew every managed certificate in the background (PATCH /acme), or HOST now"
    )
    renew.add_argument("host", nargs="?")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: :func:`run` with the process's arguments, streams, environment and clock."""
    return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr, os.environ, time.time)


def run(
    argv: Sequence[str],
    out: TextIO,
    err: TextIO,
    environ: Mapping[str, str],
    now: Callable[[], float],
) -> int:
    """
    Run one command.

    :param argv: the arguments after the program name.
    :param out: where results go.
    :param err: where errors go.
    :param environ: ``KONGACME_ADMIN``, ``KONGACME_ADMIN_TOKEN``.
    :param now: epoch seconds (the "days left" column).
    :return: the exit code.
    """
    try:
        args = build_parser().parse_args(list(argv))
    except _Help as e:
        out.write(str(e))
        return EXIT_OK
    except _Usage as e:
        err.write(str(e))
        return EXIT_USAGE
    if args.command == "check-config":
        return check_config(args.file, out, err)
    admin = AdminClient(
        args.admin or environ.get(ADMIN_ENV) or DEFAULT_ADMIN,
        args.token if args.token is not None else environ.get(TOKEN_ENV),
        args.timeout,
    )
    try:
        if args.command == "certs":
            return certs(admin, args.invalid_only, args.json, out, err, now())
        if args.command == "issue":
            return _report(admin.request("POST", "/acme", {"host": args.host}), (201,), out, err)
        if args.host is None:
            return _report(admin.request("PATCH", "/acme"), (202,), out, err)
        path = "/acme/certificates/%s/renew" % (urllib.parse.quote(args.host, safe=""),)
        return _report(admin.request("POST", path), (200,), out, err)
    except Unreachable as e:
        err.write("kongacme: %s\n" % (e,))
        return EXIT_UNREACHABLE


def check_config(path: str, out: TextIO, err: TextIO) -> int:
    """``check-config FILE``: ``OK``, or every problem with its field path."""
    from kongacme.config import load_config
    from kongacme.errors import ConfigError

    try:
        config = load_config(path)
    except ConfigError as e:
        err.write("%s: %d problem(s)\n" % (path, len(e.problems)))
        for field, message in e.problems:
            err.write("  %s\n" % ("%s: %s" % (field, message) if field else message,))
        return EXIT_FAILED
    except OSError as e:
        err.write("%s: %s\n" % (path, e.strerror or e))
        return EXIT_FAILED
    for warning in getattr(config, "warnings", ()):
        out.write("%s: warning: %s\n" % (path, warning))
    out.write("%s: OK\n" % (path,))
    return EXIT_OK


class AdminClient:
    """
    A few JSON requests to the Admin API with urllib.

    :param base: the Admin API's URL (``http://127.0.0.1:8001``).
    :param token: bearer token, or ``None``.
    :param timeout: seconds per request.
    """

    def __init__(self, base: str, token: Optional[str], timeout: float):
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """
        :return: ``(status, decoded JSON body)``, 4xx and 5xx included.
        :raises Unreachable: on a connection failure, a timeout, or an
            answer that is not JSON.
        """
        url = self.base + path
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw, content_type = response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            status, raw, content_type = e.code, e.read(), e.headers.get("Content-Type")
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable("cannot reach the Admin API at %s: %s" % (self.base, reason)) from None
        except ValueError as e:  # a malformed URL
            raise Unreachable("bad Admin API URL %r: %s" % (self.base, e)) from None
        if not (content_type or "").startswith("application/json"):
            raise Unreachable("%s answered HTTP %d with %s, not the Admin API's JSON" % (url, status, content_type))
        try:
            return status, json.loads(raw)
        except ValueError:
            raise Unreachable("%s answered invalid JSON (HTTP %d)" % (url, status)) from None


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return json.dumps(body)


def _report(answer: tuple[int, Any], ok: tuple[int, ...], out: TextIO, err: TextIO) -> int:
    status, body = answer
    if status in ok:
        out.write(_message(body) + "\n")
        return EXIT_OK
    message = _message(body)
    if status == 401:
        message += " (give --token or set %s)" % (TOKEN_ENV,)
    err.write("kongacme: HTTP %d: %s\n" % (status, message))
    if isinstance(body, dict) and isinstance(body.get("problem"), dict):
        err.write("  CA problem: %s\n" % (json.dumps(body["problem"]),))
    return EXIT_FAILED


def certs(admin: AdminClient, invalid_only: bool, raw: bool, out: TextIO, err: TextIO, now: float) -> int:
    """``certs``: a table of ``GET /acme/certificates``."""
    status, body = admin.request("GET", "/acme/certificates" + ("?invalid_only=1" if invalid_only else ""))
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return _report((status, body), (), out, err)
    if raw:
        out.write(json.dumps(body, indent=2) + "\n")
        return EXIT_OK
    rows = [("HOST", "ISSUER", "NOT AFTER (UTC)", "DAYS LEFT", "NEXT RENEWAL", "LAST ERROR")]
    for entry in body["data"]:
        renewal = entry.get("renewal") or {}
        rows.append((
            str(entry.get("host")),
            str(entry.get("issuer_cn") or "-"),
            str(entry.get("not_after")),
            _days_left(entry.get("not_after"), now),
            str(renewal.get("next_attempt") or renewal.get("renewal_due") or "-"),
            _clip(renewal.get("last_error") or "-", 60),
        ))
    if len(rows) == 1:
        out.write("no certificates\n")
        return EXIT_OK
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")
    return EXIT_OK


def _days_left(not_after: Any, now: float) -> str:
    try:
        end = calendar.timegm(time.strptime(str(not_after), TIME_FORMAT))
    except ValueError:
        return "?"
    days = int((end - now) // 86400)
    return "expired" if end <= now else str(days)


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
