"""``report.html`` in a real browser: Debian's headless Chromium opens it, every section and chart must render,
the page must log no error and fetch nothing, and a screenshot is taken and checked for drawn pixels.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on file
descriptors 3 and 4), so no Python package beyond the standard library and numpy is needed. The protocol, not
``--dump-dom`` and ``--enable-logging=stderr``, because the page's own errors arrive as typed events (exceptions,
console calls, failed loads) while Chromium's stderr mixes in its own ERROR lines (no D-Bus in a container), and
because it can measure what was laid out and drawn, not only what was parsed. No Spark or Ray:
the report is built from a run directory's files (``tests/test_report.toy_run_dir`` plus two students and both
Pareto fronts). ``scripts/test.sh`` installs Chromium (apt); without it this test skips.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.report import write_report
from tests.test_report import toy_run_dir

TIMEOUT_S = 60.0  # a cold Chromium start on 2 busy cores takes a few seconds; this only bounds a hang

# Every heading the report must show for the run below (tag, start of its text), and the charts: one <svg>
# under each of these headings.
SECTIONS = [("h2", "Models"), ("h2", "Tune: Pareto front of the trials"), ("h2", "Compression: Pareto front"),
            ("h2", "Data"), ("h2", "Search"), ("h3", "Optimisation history"), ("h3", "Learning curves"),
            ("h3", "Parameter importances"), ("h3", "Trials"), ("h3", "Failed trials"),
            ("h2", "Confusion matrix: teacher on"), ("h2", "Confusion matrix: student on"),
            ("h2", "Confusion matrix: student_int8 on")]
CHARTS = ["Tune: Pareto front of the trials", "Compression: Pareto front", "Optimisation history", "Learning curves",
          "Parameter importances", "Confusion matrix: teacher on", "Confusion matrix: student on",
          "Confusion matrix: student_int8 on"]

# Runs in the page once it has loaded: every heading, and for each <svg> the heading above it, its box on the
# page and how many of its shapes have a non-empty box (i.e. were laid out and drawn, not just parsed).
_PROBE = """(() => {
  const out = {title: document.title, headings: [], charts: [], sections: {}};
  let heading = null;
  for (const el of document.querySelectorAll('h1, h2, h3, svg')) {
    if (el.tagName.toLowerCase() !== 'svg') {
      heading = el.textContent.trim();
      const box = el.getBoundingClientRect();
      out.headings.push({text: heading, tag: el.tagName.toLowerCase(), height: box.height});
      continue;
    }
    const box = el.getBoundingClientRect(), kinds = {};
    let drawn = 0;
    for (const shape of el.querySelectorAll('circle, rect, line, polyline, path, text')) {
      const b = shape.getBBox();
      if (b.width > 0 || b.height > 0) {
        drawn += 1;
        kinds[shape.tagName] = (kinds[shape.tagName] || 0) + 1;
      }
    }
    out.charts.push({section: heading, namespace: el.namespaceURI, x: box.left + window.scrollX,
                     y: box.top + window.scrollY, width: box.width, height: box.height, drawn, kinds});
  }
  for (const h2 of document.querySelectorAll('h2')) {  // a section's text: its heading to the next h2
    const texts = [];
    for (let el = h2.nextElementSibling; el && el.tagName !== 'H2'; el = el.nextElementSibling) {
      texts.push(el.innerText);
    }
    out.sections[h2.textContent.trim()] = texts.join('\\n');
  }
  return JSON.stringify(out);
})()"""


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium not installed: scripts/setup.sh installs it (apt, as root; scripts/test.sh calls it), "
                    "or run 'sudo apt-get install --no-install-recommends chromium'")
    return path


class _DevTools:
    """A headless Chromium and its DevTools protocol on a pipe; events are kept in ``events``."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser reads commands on fd 3 and writes replies on fd 4: park the child's ends above both
        # numbers (close-on-exec), then place them there in the child only.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)

        def place_fds() -> None:
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox on
        self.log = profile.parent / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         preexec_fn=place_fds, close_fds=False, start_new_session=True)
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"no reply from Chromium in {TIMEOUT_S} s; its log: {self.log.read_text()[-2000:]}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its pipe (exit {self.proc.poll()}); "
                                   f"its log: {self.log.read_text()[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._read(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event named ``method`` (already received, or the next to arrive)."""
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):  # already gone or hung: the wait below settles it
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)  # its own session: the browser and the helpers it started
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """What the page reported as an error: uncaught exceptions, console.error/assert, and the browser's own log
    entries of level error (a failed load, a blocked request, a parse error it reports)."""
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            out.append("exception: " + (details.get("exception", {}).get("description") or details.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                               for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            out.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
    return out


def _decode_png(data: bytes) -> np.ndarray:
    """An 8-bit, non-interlaced RGB(A) PNG (what Chromium writes) as a ``(height, width, channels)`` array."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, color, interlace = header[8], header[9], header[12]
    if depth != 8 or color not in (2, 6) or interlace:
        raise ValueError(f"only 8-bit non-interlaced RGB/RGBA PNGs are decoded here, got depth={depth}, "
                         f"colour type={color}, interlace={interlace}")
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, 1 + width * bpp)
    image = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):  # undo each row's filter (PNG spec, section 9)
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            out = row
        elif kind == 1:  # Sub: a running sum per channel
            out = np.cumsum(row.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            out = (row + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: each pixel depends on its left neighbour once decoded
            out = row.copy()
            for x in range(width):
                s = slice(x * bpp, (x + 1) * bpp)
                left = out[s.start - bpp:s.stop - bpp] if x else np.zeros(bpp, dtype=np.int32)
                up = prev[s]
                if kind == 3:
                    out[s] = (row[s] + (left + up) // 2) % 256
                else:
                    corner = prev[s.start - bpp:s.stop - bpp] if x else np.zeros(bpp, dtype=np.int32)
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
                    out[s] = (row[s] + pred) % 256
        else:
            raise ValueError(f"PNG row {y} has an unknown filter type {kind}")
        image[y] = out
        prev = out.astype(np.int32)
    return image.reshape(height, width, bpp)[:, :, :3]


def _browser_run_dir(tmp_path: Path) -> Path:
    """The toy run of tests/test_report.py, finished: a student and its int8 (with their confusion matrices),
    a multi-objective tune's front of trials and a compression search's front with the chosen candidate."""
    from hybrid.pareto import parse_objectives, parse_selection, pareto_front, select

    run = toy_run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["data"]["quarantined"].update(pixel_not_finite=2)
    summary["data"]["rows_in"] += 2
    summary["models"]["teacher"].update(size_bytes=862_328, latency_ms_per_sample=0.261)
    summary["models"]["student"] = {"test": {"accuracy": 0.87, "macro_f1": 0.86}, "size_bytes": 310_552,
                                    "latency_ms_per_sample": 0.094, "test_confusion_matrix": [[6, 2], [0, 7]]}
    summary["models"]["student_int8"] = {"test": {"accuracy": 0.87, "macro_f1": 0.86}, "size_bytes": 92_114,
                                         "latency_ms_per_sample": 0.051, "test_confusion_matrix": [[7, 1], [1, 6]]}
    trials = [{"id": f"t{i}", "val_accuracy": acc, "latency_ms": ms}
              for i, (acc, ms) in enumerate([(0.91, 0.05), (0.80, 0.01), (0.88, 0.06), (None, None)])]
    accuracy_latency = [{"val_accuracy": "max"}, {"latency_ms": "min"}]
    summary["tune"]["pareto"] = pareto_front(trials, parse_objectives(accuracy_latency)).record()
    candidates = [{"id": f"c{i}", "val_accuracy": acc, "latency_ms": ms, "size_bytes": size}
                  for i, (acc, ms, size) in enumerate([(0.93, 0.09, 4e6), (0.91, 0.05, 2e6), (0.88, 0.03, 1e6),
                                                        (0.87, 0.06, 1e6)])]
    chosen = select(candidates, parse_objectives([*accuracy_latency, {"size_bytes": "min"}]),
                    parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}}))
    summary["compression"] = {"pareto": chosen.front.record(), "chosen": chosen.record()}
    (run / "summary.json").write_text(json.dumps(summary, allow_nan=False))
    return run


def open_report(page: Path, tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str], bytes]:
    """Open ``page`` in headless Chromium at 1200 px wide: ``(probe, errors, requested URLs, full-page PNG)``."""
    browser = _DevTools(_chromium(), tmp_path / "chromium-profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.events.clear()  # about:blank's own events
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        browser.send("Runtime.evaluate", {"expression": "new Promise(r => requestAnimationFrame(() => "
                                          "requestAnimationFrame(r)))", "awaitPromise": True}, session=session)
        probe = json.loads(browser.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True},
                                        session=session)["result"]["value"])
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        # optimizeForSpeed: Chromium then filters every PNG row with "Up", which numpy undoes at once (0.3 s);
        # its default encoding has Paeth rows, which _decode_png also reads, pixel by pixel (about a minute).
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "optimizeForSpeed": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session=session)
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
        return probe, _errors(browser.events), requested, base64.b64decode(shot["data"])
    finally:
        browser.close()


def test_report_renders_every_section_and_chart_in_chromium(tmp_path):
    page = write_report(_browser_run_dir(tmp_path))
    probe, errors, requested, png = open_report(page, tmp_path)
    (tmp_path / "report.png").write_bytes(png)  # kept with the run for a person to look at

    assert not errors, "the page logged errors:\n" + "\n".join(errors)
    assert requested == [page.resolve().as_uri()], f"the page fetched more than itself (offline?): {requested}"
    assert probe["title"] == "hybrid run toy"
    headings = [(h["tag"], h["text"]) for h in probe["headings"]]
    for tag, text in SECTIONS:
        found = [h for h in probe["headings"] if h["tag"] == tag and h["text"].startswith(text)]
        assert found, f"no <{tag}> heading {text!r}; headings: {headings}"
        assert found[0]["height"] > 0, f"heading {text!r} is in the page but not laid out (hidden)"

    charts = {}
    for chart in probe["charts"]:
        name = next((s for s in CHARTS if (chart["section"] or "").startswith(s)), chart["section"])
        assert name not in charts, f"two charts under {name!r}"
        charts[name] = chart
    assert sorted(charts) == sorted(CHARTS)
    for name, chart in charts.items():
        assert chart["namespace"] == "http://www.w3.org/2000/svg", name
        assert chart["width"] > 100 and chart["height"] > 50, f"{name}: laid out at {chart['width']}x{chart['height']}"
        assert chart["drawn"] >= 5, f"{name}: only {chart['drawn']} shapes drawn ({chart['kinds']})"
    curves = charts["Learning curves"]["kinds"]  # t3 failed before its first epoch: no curve
    assert curves["circle"] == 3  # where each trial with a history ended
    assert curves["polyline"] == 2  # t1, pruned after one epoch, is that circle alone (a 1-point line has no extent)
    for model in ("teacher", "student", "student_int8"):
        assert charts[f"Confusion matrix: {model} on"]["kinds"]["rect"] == 4  # 2 x 2 cells
    assert charts["Compression: Pareto front"]["kinds"]["circle"] == 4  # every candidate
    assert charts["Parameter importances"]["kinds"]["rect"] == 2  # one bar per tuned parameter

    sections = probe["sections"]
    assert "label_null\t5" in sections["Data"] and "pixel_not_finite\t2" in sections["Data"]  # counts by reason
    assert "102\t70\t10\t15\t7" in sections["Data"]  # rows in, train, val, test, quarantined
    models = [line.split("\t")[0] for line in sections["Models"].splitlines()[1:]]
    assert models == ["teacher", "student", "student_int8"]  # the comparison, one row each

    image = _decode_png(png)
    assert image.shape[1] == 1200 and image.shape[0] > 2000, image.shape
    assert image.std() > 10  # not a blank page
    for name, chart in charts.items():  # each chart's own pixels: drawn, in more than one colour
        x, y = int(chart["x"]), int(chart["y"])
        region = image[y:y + int(chart["height"]), x:x + int(chart["width"])].reshape(-1, 3)
        inked = (region < 200).any(axis=1).mean()
        colours = len(np.unique(region // 32, axis=0))
        assert inked > 0.005 and colours >= 3, f"{name}: {inked:.2%} of its pixels drawn, {colours} colours"
