#!/usr/bin/env python3
"""
Regenerate docs/status-page.png, the README's picture of the Admin
listener's status page: serves the real page (kongacme.web.visibility) over
a few made-up certificates on 127.0.0.1 and has headless Chromium take a
1200x800 screenshot of it.

    python3 scripts/screenshot_status_page.py [OUTPUT.png]

Needs the ``chromium`` Debian package (scripts/bootstrap installs it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.internet.utils import getProcessOutputAndValue

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kongacme.renewal.state import RenewalState  # noqa: E402
from kongacme.web.admin import make_admin_factory  # noqa: E402
from kongacme.web.visibility import install_visibility  # noqa: E402

DAY = 86400.0
DEFAULT_OUTPUT = os.path.join(os.path.dirname(HERE), "docs", "status-page.png")


class DemoRenewal:
    """A renewal service's ``states()`` over a fixed list."""

    def __init__(self, states: list[RenewalState]):
        self._states = states

    def states(self) -> list[RenewalState]:
        return list(self._states)


def demo_states(now: float) -> list[RenewalState]:
    """A few certificates in every state the page shows."""
    return [
        RenewalState("example.com", not_before=now - 20 * DAY, not_after=now + 70 * DAY, issuer="R11",
                     due_at=now + 56 * DAY, next_attempt=now + 56 * DAY, rule="ari"),
        RenewalState("api.example.com", not_before=now - 50 * DAY, not_after=now + 40 * DAY, issuer="R11",
                     due_at=now + 26 * DAY, next_attempt=now + 26 * DAY),
        RenewalState("shop.example.com", not_before=now - 78 * DAY, not_after=now + 12 * DAY, issuer="R11",
                     due_at=now - 2 * DAY, next_attempt=now + 3 * 3600, failures=2,
                     last_error="urn:ietf:params:acme:error:rateLimited: too many new orders (HTTP 429)"),
        RenewalState("legacy.example.net", not_before=now - 85 * DAY, not_after=now + 5 * DAY, issuer="R11",
                     admitted=False),
        RenewalState("<b>odd</b>.example.org", not_before=now - 5 * DAY, not_after=now + 150 * DAY,
                     issuer="E6", due_at=now + 136 * DAY, next_attempt=now + 136 * DAY),
    ]


async def main(reactor: Any, output: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    daemon = SimpleNamespace(renewal=DemoRenewal(demo_states(reactor.seconds())), cache=None, manager=None,
                             tls_factory=None, storage=None, config=None)
    site = make_admin_factory(lambda: {}, reactor=reactor)
    install_visibility(site, daemon, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        with tempfile.TemporaryDirectory() as profile:
            out, err, code = await getProcessOutputAndValue(
                "/usr/bin/timeout",
                ("120", chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                 "--hide-scrollbars", "--user-data-dir=" + profile, "--screenshot=" + os.path.abspath(output),
                 "--window-size=1200,800", "http://127.0.0.1:%d/" % (port.getHost().port,)),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": profile},
                reactor=reactor,
            )
    finally:
        await port.stopListening()
    if code != 0:
        sys.stderr.write(err.decode("utf-8", "replace"))
        raise SystemExit("chromium failed (exit %d)" % (code,))
    print("wrote", output)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT
    react(lambda reactor: ensureDeferred(main(reactor, target)))
