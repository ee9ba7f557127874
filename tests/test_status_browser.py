"""
The status page in a real browser: headless Chromium renders the admin
listener's C{/} of a real C{twistd fmq} under load from the load tester, and
the test reads the rendered DOM, not the JSON.

Chromium is Debian's C{chromium} package, which C{.ci/run} installs. Where it
is missing the test skips with a loud reason, except under CI (C{CI=true}),
where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

from fmq.protocol import broker_key
from tests.e2e import PATIENCE, ROOT, FmqProcess, HeldBackend, eventually

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1600",
]


def chromium() -> str:
    """
    Chromium's path, or skip loudly (fail under CI).
    """
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium): no browser test"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: .ci/run must install it)")
        pytest.skip(reason)
    return path


async def render(url: str, profile: Path) -> str:
    """
    The DOM of C{url} after its scripts ran for eight seconds of virtual time.
    """
    out, err, code = await getProcessOutputAndValue(
        chromium(),
        [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
        ],
        env=dict(os.environ),
        reactor=reactor,
    )
    assert code == 0, err.decode(errors="replace")
    return out.decode()


@attrs.define(eq=False)
class Element:
    """
    One element of the rendered page: its tag, attributes, text, and the
    ids of the elements around it.
    """

    tag: str
    attrs: dict[str, str]
    within: tuple[str, ...]
    text: str = ""


class Page(HTMLParser):
    """
    The rendered page as a flat list of elements.
    """

    VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        within = tuple(e.attrs["id"] for e in self._open if "id" in e.attrs)
        element = Element(tag, values, within)
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find(self, tag: str, within: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag
            and (within is None or within in e.within)
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def rows(self, table: str) -> list[tuple[Element, list[str]]]:
        """
        The body rows of table C{table}, each with its cells' text.
        """
        rows = [r for r in self.find("tr", within=table) if r.attrs.get("data-key") is not None]
        cells = self.find("td", within=table)
        return [(row, [c.text.strip() for c in cells if c in _children(self, row)]) for row in rows]


def _children(page: Page, row: Element) -> list[Element]:
    start = page.elements.index(row)
    children = []
    for e in page.elements[start + 1 :]:
        if e.tag == "tr":
            break
        children.append(e)
    return children


class PageBackend(HeldBackend):
    """
    The stand-in backend: holds C{/held}, answers C{/bad} with a malformed
    answer, and everything else at once.
    """

    def take(self, key: str, line: bytes) -> None:
        self.taken.append(line)
        if line.startswith(b"GET /held"):
            self.held.append((key, line))
        else:
            self.answer(key, line)

    def render(self, line: bytes) -> bytes:
        if line.startswith(b"GET /bad"):
            return b"not a status\n"
        return super().render(line)


async def metrics(fmq: FmqProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await treq.get(f"http://127.0.0.1:{fmq.admin_port}/metrics", pool=fmq.pool)
    text = (await response.content()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_status_page_in_chromium(make_fmq, tmp_path: Path) -> None:
    """
    Under load from the load tester, the rendered page shows the numbers of
    C{/metrics}, the broker request held in flight (its query cut), the
    malformed answer's 502 in the events, and charts with points.
    """
    chromium()
    fmq = await make_fmq()
    backend = PageBackend(fmq.directory)
    backend.start()
    held: Deferred | None = None
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "fmq.tools.loadtest", "--port", str(fmq.port),
             "--admin-port", str(fmq.admin_port),
             "--keys", "10", "--batch", "20", "--steps", "50,200", "--rounds", "4",
             "--timeout", str(PATIENCE), "--report", str(tmp_path / "load.json"),
             "--chart", str(tmp_path / "load.png")],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            reactor=reactor,
        )  # fmt: skip
        assert code == 0, (out + err).decode(errors="replace")
        bad = await fmq.get("/bad")
        assert bad.code == 502
        await bad.content()
        held = fmq.get("/held?token=s3cret")
        await fmq.waiting(1)
        await eventually(lambda: _sampled(fmq, 3), "three samples")

        html = await render(f"http://127.0.0.1:{fmq.admin_port}/", tmp_path / "chromium")
        now = await metrics(fmq)
        page = Page(html)

        shown = {
            (e.attrs["data-metric"], e.attrs.get("data-kind")): e.text.strip()
            for e in page.find("dd", within="numbers")
            if e.attrs.get("data-metric", "").startswith("fmq_")
        }
        expected = {
            (name, None): f"{int(value):,}"
            for (name, labels), value in now.items()
            if name
            in {
                "fmq_requests_total",
                "fmq_broker_requests_total",
                "fmq_collapsed_total",
                "fmq_caller_timeouts_total",
                "fmq_callers_waiting",
                "fmq_broker_requests_in_flight",
                "fmq_threads",
            }
        }
        expected.update(
            {
                ("fmq_errors_total", dict(labels)["kind"]): f"{int(value):,}"
                for (name, labels), value in now.items()
                if name == "fmq_errors_total"
            }
        )
        assert shown == expected
        assert expected[("fmq_requests_total", None)] != "0"
        assert expected[("fmq_errors_total", "malformed")] == "1"

        held_key = broker_key(b"GET", b"/held?token=s3cret")
        assert [cells for row, cells in page.rows("oldest") if row.attrs["data-key"] == held_key][
            0
        ][:4] == [held_key, "GET", "/held?…", "1"]
        assert "s3cret" not in html

        bad_key = broker_key(b"GET", b"/bad")
        messages = [cells[3] for row, cells in page.rows("events") if cells[2] == bad_key]
        assert any("502 to 1 callers" in m for m in messages), messages
        assert any(m.startswith("malformed response") for m in messages), page.rows("events")

        charts = {e.attrs["id"]: int(e.attrs.get("data-points", 0)) for e in page.find("svg")}
        assert len(charts) == 9 and all(charts.values()), charts
        assert charts["chart-requests"] >= 3, charts
    finally:
        backend.release()
        if held is not None:
            response = await held
            await response.content()
        backend.stop()


async def _sampled(fmq: FmqProcess, count: int) -> bool:
    response = await treq.get(f"http://127.0.0.1:{fmq.admin_port}/status.json", pool=fmq.pool)
    return len(json.loads(await response.content())["samples"]["time"]) >= count
