"""
Tests for kongacme.web.status_page and the ``/`` route of
kongacme.web.visibility: the HTML itself, the page over a real listening
admin site, and the page as headless Chromium renders it.
"""

from __future__ import annotations

import os
import shutil
import struct
from html.parser import HTMLParser
from typing import Any, Optional

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from kongacme.renewal.state import RenewalState
from kongacme.issuance.issuers import IssuedBy
from kongacme.web.status_page import IssuerView, Thresholds, render_status_page
from kongacme.web.visibility import thresholds_of
from tests.test_web_metrics import DAY, NOW, FakeDaemon, FakeRenewal, MetricsSiteMixin, sample_states
from tests.test_web_support import get

HOSTILE = '<script>alert("x")</script>.example.test'
HOSTILE_ISSUER = '"><img src=x onerror=alert(1)>'

#: Elements that never have an end tag (the DOM builder must not nest into them).
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source", "line", "rect"}


@attrs.define(eq=False)
class Node:
    """An element of a parsed document."""

    tag: str
    attributes: dict[str, str]
    children: list["Node | str"] = attrs.field(factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attributes.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Any:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, cls: Optional[str] = None) -> list["Node"]:
        return [n for n in self.iter() if n.tag == tag and (cls is None or cls in n.classes)]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, Optional[str]]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs_})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs_: list[tuple[str, Optional[str]]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs_}))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(document: str) -> Node:
    """A small DOM of ``document`` (stdlib parser: what the markup says, no browser fix-ups)."""
    builder = _Builder()
    builder.feed(document)
    builder.close()
    return builder.root


def rows_by_host(dom: Node) -> dict[str, Node]:
    """The certificate table's rows, by the host cell's text."""
    return {row.find_all("td", "host")[0].text(): row for row in dom.find_all("tr", "cert")}


class PageChecks:
    """Assertions shared by the HTML and the Chromium tests."""

    def assertStatusPage(self, dom: Node) -> None:
        rows = rows_by_host(dom)
        self.assertEqual(sorted(rows), sorted(s.host for s in sample_states()))
        self.assertIn("level-green", rows["healthy.example.test"].classes)
        self.assertIn("level-red", rows["soon.example.test"].classes)
        self.assertIn("level-amber", rows["failing.example.test"].classes)
        self.assertIn("failing", rows["failing.example.test"].classes)
        self.assertNotIn("failing", rows["healthy.example.test"].classes)
        self.assertIn("not-admitted", rows["retired.example.test"].classes)
        badge = rows["soon.example.test"].find_all("span", "days")[0]
        self.assertEqual(badge.classes, {"days", "level-red"})
        self.assertEqual(badge.text(), "5.0 days")
        error = rows["failing.example.test"].find_all("td", "error")[0].text()
        self.assertIn("rateLimited", error)
        self.assertIn("3 failure(s) in a row", error)
        self.assertEqual(rows["retired.example.test"].find_all("td", "admitted")[0].text(), "no")
        self.assertEqual(rows["healthy.example.test"].find_all("td", "admitted")[0].text(), "yes")
        # The hostile values are text, not markup: no element was injected.
        self.assertEqual(rows[HOSTILE].find_all("td", "issuer")[0].text(), HOSTILE_ISSUER)
        self.assertEqual(dom.find_all("script"), [])
        self.assertEqual(dom.find_all("img"), [])
        # The timeline: one entry per certificate, soonest expiry first.
        svg = dom.find_all("svg", "timeline")
        self.assertEqual(len(svg), 1)
        entries = svg[0].find_all("g", "entry")
        self.assertEqual(len(entries), 5)
        labels = [e.find_all("text", "label")[0].text() for e in entries]
        self.assertEqual(labels[0], "soon.example.test")
        self.assertIn("level-red", entries[0].classes)
        self.assertEqual(len(svg[0].find_all("rect", "bar")), 5)
        self.assertIn(HOSTILE, "".join(e.find_all("title")[0].text() for e in entries))


class RenderTests(PageChecks, SynchronousTestCase):
    """
    Tests for render_status_page's HTML (no browser).
    """

    def render(self, states: list[RenewalState], **kwargs: Any) -> str:
        return render_status_page(states, NOW, version="9.9", **kwargs).decode("utf-8")

    def test_rows_colours_timeline(self) -> None:
        """
        Every certificate gets a row with its colour class, error, admission
        and a bar in the timeline.
        """
        self.assertStatusPage(parse(self.render(sample_states())))

    def test_escaped(self) -> None:
        """
        Host names and other values are HTML-escaped wherever they appear;
        the page has no script at all.
        """
        page = self.render(sample_states())
        self.assertNotIn("<script", page)
        self.assertNotIn("<img", page)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.example.test", page)
        self.assertIn("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;", page)

    def test_issuers(self) -> None:
        """
        With an issuer view: an "ACME CAs" table (role, directory, state,
        counts, last error, escaped) and the directory under the issuer of
        each certificate whose CA is known, marked when it was a fallback.
        """
        states = sample_states()
        view = IssuerView(
            cas=[
                {"directory": "https://one.test/dir", "role": "primary", "available": False, "issued": 0,
                 "failed": 3, "last_error": "<refused>"},
                {"directory": "https://two.test/dir", "role": "fallback 1", "available": True, "issued": 1,
                 "failed": 0, "last_error": None},
            ],
            issued_by={states[0].host: IssuedBy("https://two.test/dir", True)}.get,
        )
        page = self.render(states, issuers=view)
        self.assertIn("<h2>ACME CAs</h2>", page)
        self.assertIn('<tr class="ca down"><td>primary</td><td class="directory">https://one.test/dir</td>', page)
        self.assertIn("&lt;refused&gt;", page)
        self.assertEqual(page.count("<small>fallback · https://two.test/dir</small>"), 1)
        self.assertNotIn("ACME CAs", self.render(states))

    def test_self_contained(self) -> None:
        """
        No external asset: no src, no href, no url() in the document.
        """
        page = self.render(sample_states())
        for needle in ("src=", "href=", "url(", "@import"):
            self.assertNotIn(needle, page.replace("src=x", ""))

    def test_thresholds(self) -> None:
        """
        Red under red_days (or expired), amber under amber_days, green
        from amber_days on, unknown without an expiry.
        """
        t = Thresholds(amber_days=14, red_days=7)
        self.assertEqual(t.level(-DAY), "red")
        self.assertEqual(t.level(6.9 * DAY), "red")
        self.assertEqual(t.level(7 * DAY), "amber")
        self.assertEqual(t.level(13.9 * DAY), "amber")
        self.assertEqual(t.level(14 * DAY), "green")
        self.assertEqual(t.level(None), "unknown")

    def test_custom_thresholds(self) -> None:
        """
        The thresholds given decide the colours and the legend.
        """
        dom = parse(self.render(sample_states(), thresholds=Thresholds(amber_days=90, red_days=30)))
        rows = rows_by_host(dom)
        self.assertIn("level-amber", rows["healthy.example.test"].classes)
        self.assertIn("level-red", rows["retired.example.test"].classes)
        self.assertIn("renewal due (under 90 days)", dom.text())

    def test_expired_and_unknown(self) -> None:
        """
        An expired certificate says so in red; one without a known expiry
        is grey.
        """
        dom = parse(self.render([
            RenewalState("old.test", not_after=NOW - 3 * DAY),
            RenewalState("odd.test", not_after=None, rule="unreadable"),
        ]))
        rows = rows_by_host(dom)
        self.assertEqual(rows["old.test"].find_all("span", "days")[0].text(), "expired 3 d ago")
        self.assertIn("level-red", rows["old.test"].classes)
        self.assertIn("level-unknown", rows["odd.test"].classes)
        self.assertIn("expired", dom.find_all("svg", "timeline")[0].text())

    def test_empty(self) -> None:
        """
        Without certificates the page says so and draws no timeline.
        """
        dom = parse(self.render([], cache_size=0))
        self.assertIn("No managed certificates yet.", dom.text())
        self.assertEqual(dom.find_all("svg"), [])

    def test_summary(self) -> None:
        """
        The summary counts certificates by state.
        """
        dom = parse(self.render(sample_states(), cache_size=3))
        counts = {li.classes.pop(): li.find_all("b")[0].text() for li in dom.find_all("li")}
        self.assertEqual(counts["count-managed"], "5")
        self.assertEqual(counts["count-healthy"], "3")
        self.assertEqual(counts["count-renewal-due"], "1")
        self.assertEqual(counts["count-critical-or-expired"], "1")
        self.assertEqual(counts["count-failing"], "1")
        self.assertEqual(counts["count-not-admitted"], "1")
        self.assertEqual(counts["count-names-in-cache"], "3")

    def test_max_rows(self) -> None:
        """
        Beyond max_rows the page lists (and draws) the certificates needing
        attention first: failing, then the soonest expiry; it says how many
        of how many, and where the full list is; the counts cover all.
        """
        dom = parse(self.render(sample_states(), max_rows=2))
        self.assertEqual(sorted(rows_by_host(dom)), ["failing.example.test", "soon.example.test"])
        self.assertEqual(len(dom.find_all("svg", "timeline")[0].find_all("g", "entry")), 2)
        self.assertIn("Showing the 2 of 5 certificates that need attention first", dom.text())
        self.assertIn("GET /acme/certificates", dom.text())
        counts = {li.classes.pop(): li.find_all("b")[0].text() for li in dom.find_all("li")}
        self.assertEqual(counts["count-managed"], "5")
        self.assertNotIn("Showing the", parse(self.render(sample_states(), max_rows=5)).text())

    def test_thresholds_from_config(self) -> None:
        """
        The daemon's acme.renew_threshold_days and renewal.critical_days
        set the colours; defaults without a config.
        """
        config = attrs.make_class("C", ["acme", "renewal"])(
            attrs.make_class("A", ["renew_threshold_days"])(30.0),
            attrs.make_class("R", ["critical_days"])(3.0),
        )
        self.assertEqual(thresholds_of(FakeDaemon(config=config)), Thresholds(30.0, 3.0))
        self.assertEqual(thresholds_of(FakeDaemon()), Thresholds(14.0, 7.0))


class StatusRouteTests(MetricsSiteMixin, TestCase):
    """
    Tests for GET / over a real listening admin site.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.daemon = FakeDaemon(renewal=FakeRenewal(sample_states()))

    @inlineCallbacks
    def test_get(self) -> Any:
        """
        GET / answers the HTML page with a strict Content-Security-Policy.
        """
        port = self.start_site(self.daemon, self.clock)
        response = yield get(port, b"/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertIn(b"default-src 'none'", response.header(b"content-security-policy"))
        self.assertEqual(response.header(b"x-content-type-options"), b"nosniff")
        self.assertIn(b"healthy.example.test", response.body)

    @inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD / answers the headers with the page's Content-Length, no body.
        """
        port = self.start_site(self.daemon, self.clock)
        page = yield get(port, b"/")
        head = yield get(port, b"/", method=b"HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(int(head.header(b"content-length")), len(page.body))
        self.assertTrue(head.raw.endswith(b"\r\n\r\n"))

    @inlineCallbacks
    def test_token(self) -> Any:
        """
        With an admin token the page needs it too.
        """
        port = self.start_site(self.daemon, self.clock, token="s3cret")
        refused = yield get(port, b"/")
        self.assertEqual(refused.status, 401)
        allowed = yield get(port, b"/", headers=b"Authorization: Bearer s3cret\r\n")
        self.assertEqual(allowed.status, 200)


def chromium_binary() -> Optional[str]:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def png_size(path: str) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError("%s is not a PNG" % (path,))
    return struct.unpack(">II", head[16:24])


def run_chromium(binary: str, profile: str, *args: str) -> Any:
    """
    Run headless Chromium as a child process (the reactor keeps serving
    the page meanwhile); ``timeout`` bounds a hung browser.

    :return: Deferred of ``(stdout, stderr, exit code)``.
    """
    argv = (
        "120", binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
        "--disable-extensions", "--user-data-dir=" + profile, *args,
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": profile}
    return getProcessOutputAndValue("/usr/bin/timeout", argv, env=env, reactor=reactor)


class ChromiumTests(PageChecks, MetricsSiteMixin, TestCase):
    """
    Tests for the status page as headless Chromium renders it.
    """

    timeout = 240

    def setUp(self) -> None:
        self.binary = chromium_binary()
        if self.binary is None:
            raise SkipTest("chromium is not installed (apt-get install chromium; scripts/bootstrap does)")
        self.clock = Clock()
        self.clock.advance(NOW)
        self.profile = os.path.abspath(self.mktemp())
        os.makedirs(self.profile)

    @inlineCallbacks
    def test_rendered_dom_and_screenshot(self) -> Any:
        """
        Chromium renders every row with its colour class, the hostile host
        as text (no element injected) and the timeline; the screenshot is a
        1200x800 PNG.
        """
        port = self.start_site(FakeDaemon(renewal=FakeRenewal(sample_states())), self.clock)
        url = "http://127.0.0.1:%d/" % (port,)
        out, err, code = yield run_chromium(self.binary, self.profile, "--dump-dom", url)
        self.assertEqual(code, 0, err[-2000:])
        dom = parse(out.decode("utf-8"))
        self.assertStatusPage(dom)
        self.assertEqual(dom.find_all("title")[0].text(), "kongacme status")

        shot = os.path.join(self.profile, "status-page.png")
        out, err, code = yield run_chromium(
            self.binary, self.profile, "--screenshot=" + shot, "--window-size=1200,800", "--hide-scrollbars", url
        )
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(png_size(shot), (1200, 800))
