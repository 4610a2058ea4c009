"""The rendered report in a real browser: headless Chromium opens reports/index.html from disk
(file://), and the test checks that the page logs no console error or exception, that every
figure has a non-zero size inside the window, and saves a full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
replies on fd 4, each a JSON message ended by a NUL byte), so no package is needed. A first page
with a deliberate console error and a broken image proves the error capture is not vacuous.
"""

import base64
import contextlib
import fcntl
import itertools
import json
import math
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_report import fixture_studies, partial_runs, write_smoke_results

from normrepro import config, report

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1366,768",  # a laptop screen
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)"),
]
# Sizes of every figure and its SVG, and whether the page scrolls sideways.
PROBE = """JSON.stringify({
  figures: [...document.querySelectorAll('figure')].map(f => {
    const r = f.getBoundingClientRect(), s = f.querySelector('svg');
    const q = s ? s.getBoundingClientRect() : {width: 0, height: 0};
    return {w: r.width, h: r.height, svg_w: q.width, svg_h: q.height,
            caption: (f.querySelector('figcaption') || {}).textContent || ''};
  }),
  page_w: document.documentElement.scrollWidth, view_w: window.innerWidth,
  sections: document.querySelectorAll('section.study').length,
})"""


class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, user_data_dir: Path):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # Move the child's ends well above 4 first, so the dup2 onto 3 and 4 cannot clobber them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]

        def wire_fds():  # in the child, before exec: fd 3 = commands in, fd 4 = replies out
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            pass_fds=(3, 4),
        )
        for fd in (to_child_r, from_child_w, *high):
            os.close(fd)
        self.buf, self.next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_child], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.from_child, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method, timeout=30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('url', '')}: {p['entry']['text']}")
        return out

    def open(self, url: str) -> str:
        """A fresh tab on `url`, loaded; returns its session id (events cleared)."""
        # Chromium's first start on a fresh machine builds its font cache before it answers
        # (over 30 s on a loaded 2-core CI box): the first command waits longer.
        first = self.next_id == 0
        target = self.call(
            "Target.createTarget", {"url": "about:blank"}, timeout=180.0 if first else 30.0
        )["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        time.sleep(0.2)  # let late console messages arrive
        return session

    def evaluate(self, expression: str, session: str):
        res = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        return res["result"]["value"]

    def screenshot(self, session: str) -> bytes:
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            session,
            timeout=60,
        )
        return base64.b64decode(shot["data"])

    def close(self):
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    dt = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield dt
    dt.close()


def test_error_capture_sees_a_broken_page(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="nowhere.png"><script>console.error("boom")</script></body></html>'
    )
    browser.open(bad.as_uri())
    errors = browser.errors()
    assert any("boom" in e for e in errors), errors
    assert any("nowhere.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors


@pytest.mark.parametrize("grid", ["full", "partial"])
def test_report_opens_from_disk_without_errors(browser, tmp_path, grid):
    studies = fixture_studies(partial_runs() if grid == "partial" else None)
    page = tmp_path / "reports" / "index.html"
    page.parent.mkdir()
    page.write_text(report.render(studies, {"scale": "full"}))

    assert_renders_cleanly(browser, page, len(studies), tmp_path / f"report-{grid}.png")


def assert_renders_cleanly(browser, page: Path, n_sections: int, png_out: Path) -> None:
    """Open `page` from disk: no console error, every study section, every figure with a
    non-zero size inside a laptop-wide window, no sideways scroll; saves a screenshot."""
    session = browser.open(page.as_uri())
    probe = json.loads(browser.evaluate(PROBE, session))
    png = browser.screenshot(session)
    png_out.write_bytes(png)

    assert browser.errors() == []
    assert probe["sections"] == n_sections
    assert probe["figures"], "no figure rendered"
    for f in probe["figures"]:
        assert f["w"] > 0 and f["h"] > 0 and f["svg_w"] > 50 and f["svg_h"] > 50, f
        assert f["svg_w"] <= probe["view_w"], f"figure wider than the window: {f}"
        assert f["caption"].strip(), f
    assert probe["page_w"] <= probe["view_w"], "the page scrolls sideways on a laptop screen"
    assert png.startswith(b"\x89PNG") and len(png) > 50_000


# Every survivorship mark ('1/2, 1 div.') drawn in a study's figures, with its box on the page
# and the box of the SVG it belongs to.
MARKS = """JSON.stringify([...document.querySelectorAll('section#STUDY figure svg text')]
  .filter(t => /^\\d+\\/\\d+, /.test(t.textContent.trim()))
  .map(t => {
    const r = t.getBoundingClientRect(), s = t.closest('svg').getBoundingClientRect();
    return {text: t.textContent.trim(), x: r.x, y: r.y, w: r.width, h: r.height,
            sx: s.x, sy: s.y, sw: s.width, sh: s.height};
  }))"""


def survivorship_marks(browser, session: str, study: str) -> list[dict]:
    """The survivorship marks Chromium rendered in `study`'s figures; asserts each is visible
    (a non-zero box inside its figure's SVG). For the smoke report of test_pipeline too."""
    marks = json.loads(browser.evaluate(MARKS.replace("STUDY", study), session))
    for m in marks:
        assert m["w"] > 0 and m["h"] > 0, m
        assert m["sx"] - 1 <= m["x"] and m["x"] + m["w"] <= m["sx"] + m["sw"] + 1, m
        assert m["sy"] - 1 <= m["y"] and m["y"] + m["h"] <= m["sy"] + m["sh"] + 1, m
    return marks


def test_smoke_report_shows_the_diverged_nf_cell_in_the_figure(browser, tmp_path):
    plan = write_smoke_results(tmp_path / "results")
    page = tmp_path / "reports" / "index.html"
    args = ["--params", str(config.REPO / "params.yaml"), "--config", "scale=smoke"]
    assert report.main([*args, "--results", str(tmp_path / "results"), "--out", str(page)]) == 0

    assert_renders_cleanly(browser, page, len(plan), tmp_path / "smoke-report.png")
    session = browser.open(page.as_uri())
    lr10 = [c for c in plan["nf_grid"] if c["lr"] >= 1]  # the smoke preset's diverging cell
    marks = survivorship_marks(browser, session, "nf_grid")
    assert [m["text"] for m in marks] == [f"0/{len(lr10)}, {len(lr10)} div."]
    # No other study lost runs here, so no other figure carries a mark.
    for study in plan:
        if study != "nf_grid":
            assert survivorship_marks(browser, session, study) == [], study


# Every text of every figure: its box's four corners on the page (so a turned label is measured
# as drawn, not as its upright bounding rectangle) and its font size in CSS pixels as shown.
TEXT_BOXES = """JSON.stringify([...document.querySelectorAll('figure svg')].map(svg =>
  [...svg.querySelectorAll('text')].filter(t => t.textContent.trim()).map(t => {
    const b = t.getBBox(), m = t.getScreenCTM();
    const at = (x, y) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f];
    return {text: t.textContent.trim(),
            quad: [at(b.x, b.y), at(b.x + b.width, b.y), at(b.x + b.width, b.y + b.height),
                   at(b.x, b.y + b.height)],
            px: parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b)};
  })))"""


def overlap_depth(p: list, q: list) -> float:
    """How far two convex quadrilaterals overlap, in pixels (0: apart): the smallest overlap of
    their projections on the normals of their edges (separating axis theorem)."""
    depth = math.inf
    for poly in (p, q):
        for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1], strict=True):
            nx, ny = y1 - y2, x2 - x1
            length = math.hypot(nx, ny)
            if length == 0:
                continue
            a = [(x * nx + y * ny) / length for x, y in p]
            b = [(x * nx + y * ny) / length for x, y in q]
            depth = min(depth, min(max(a), max(b)) - max(min(a), min(b)))
            if depth <= 0:
                return 0.0
    return depth


def assert_figure_texts_readable(browser, page: Path) -> int:
    """No two texts of a figure overlap (by more than 1 px) and none is drawn under 9 px, at a
    laptop-wide window; returns how many texts were measured."""
    session = browser.open(page.as_uri())
    figures = json.loads(browser.evaluate(TEXT_BOXES, session))
    assert figures
    for texts in figures:
        for t in texts:
            assert t["px"] >= 9, f"{t['text']!r} drawn at {t['px']:.1f} px"
        for a, b in itertools.combinations(texts, 2):
            depth = overlap_depth(a["quad"], b["quad"])
            assert depth <= 1.0, f"{a['text']!r} and {b['text']!r} overlap by {depth:.1f} px"
    return sum(len(t) for t in figures)


def test_overlap_measure_sees_overlapping_and_turned_boxes():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert overlap_depth(square, [[x + 8, y] for x, y in square]) == pytest.approx(2)
    assert overlap_depth(square, [[x + 11, y] for x, y in square]) == 0
    # Two long labels turned 30 degrees, 20 px apart: their upright rectangles would overlap,
    # the labels themselves do not.
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    label = [[0, 0], [60 * c, -60 * s], [60 * c + 8 * s, -60 * s + 8 * c], [8 * s, 8 * c]]
    assert overlap_depth(label, [[x + 20, y] for x, y in label]) == 0


def test_figure_labels_do_not_overlap_and_are_readable(browser, tmp_path):
    write_smoke_results(tmp_path / "results")
    smoke = tmp_path / "smoke" / "index.html"
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    args = ["--params", str(params), "--config", "scale=smoke"]
    assert report.main([*args, "--results", str(tmp_path / "results"), "--out", str(smoke)]) == 0
    full = tmp_path / "full" / "index.html"  # six norms at two batch sizes, long model names
    full.parent.mkdir()
    full.write_text(report.render(fixture_studies(), {"scale": "full"}))
    for page in (smoke, full):
        assert assert_figure_texts_readable(browser, page) > 50, page
