"""The HTML report in a real browser: headless Chromium renders it from a file URL.

Asserted on the rendered DOM: every target key with its status, the status
filter and search (driven through the URL and through the page's own
controls), a click on a module, no network request at all, and a screenshot.
"""

from __future__ import annotations

import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import Page, chromium, dump_dom, screenshot

from weightsurgery import Report


class _Rows(HTMLParser):
    """The tensor table's rows and the tree's nodes, as the browser left them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, bool]] = {}
        self.nodes: dict[tuple[str, str], tuple[str, bool]] = {}
        self.ready = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-key" in a:
            self.rows[a["data-key"] or ""] = (a["data-status"] or "", "hidden" in a)
        elif tag == "div" and "data-side" in a:
            self.nodes[(a["data-side"] or "", a["data-path"] or "")] = (a["data-status"] or "", "hidden" in a)
        elif tag == "body":
            self.ready = a.get("data-ready") == "1"


def _rendered(url: str, profile: Path) -> _Rows:
    parsed = _Rows()
    parsed.feed(dump_dom(url, profile))
    assert parsed.ready, "the page's script did not finish"
    return parsed


@pytest.fixture(scope="module")
def page_url(report: Report, tmp_path_factory: pytest.TempPathFactory) -> str:
    chromium()
    return report.to_html(tmp_path_factory.mktemp("html") / "report.html", target="Target").as_uri()


def _status(report: Report, key: str) -> str:
    return "ambiguous" if key in report.ambiguous else report.records[key].status


def test_every_target_key_is_rendered_with_its_status(report: Report, page_url: str, tmp_path: Path) -> None:
    dom = _rendered(page_url, tmp_path / "profile")
    assert dom.rows == {key: (_status(report, key), False) for key in report.records}
    assert dom.nodes[("target", "blocks.{0..2}")] == ("loaded", False)  # numbered siblings: one node
    assert dom.nodes[("target", "side.proj")][0] == "ambiguous"
    assert dom.nodes[("target", "head")][0] == "mixed"  # a kept weight and an initialized bias
    assert dom.nodes[("source", "model.{aux_a,aux_b}")][0] == "unused"


def test_the_status_filter_and_search_in_the_url_hide_the_rest(report: Report, page_url: str, tmp_path: Path) -> None:
    dom = _rendered(page_url + "#status=kept,ambiguous", tmp_path / "profile")
    shown = {k for k, (_, hidden) in dom.rows.items() if not hidden}
    assert shown == {k for k in report.records if _status(report, k) in ("kept", "ambiguous")} == {
        "head.weight", "side.proj.weight"}
    assert dom.nodes[("target", "blocks.{0..2}")][1] is True  # no kept key under it: hidden
    assert dom.nodes[("target", "head")][1] is False
    dom = _rendered(page_url + "#q=blocks.1", tmp_path / "profile2")
    assert {k for k, (_, hidden) in dom.rows.items() if not hidden} == {k for k in report.records if "blocks.1" in k}


def test_driven_in_the_page_no_request_leaves_it_and_a_module_click_shows_its_tensors(
        report: Report, page_url: str, tmp_path: Path) -> None:
    page = Page(tmp_path / "profile")
    try:
        page.goto(page_url)
        assert page.evaluate("document.body.dataset.ready") == "1"
        shown = "[...document.querySelectorAll('#tensors tbody tr:not([hidden])')].map(r => r.dataset.key)"
        assert page.evaluate(shown) == list(report.records)
        # untick "loaded" in the filter bar
        page.evaluate("document.querySelector('#filters input[data-status=loaded]').click()")
        assert set(page.evaluate(shown)) == {k for k in report.records if _status(report, k) != "loaded"}
        assert "status=" in page.evaluate("location.hash")
        page.evaluate("document.querySelector('#filters input[data-status=loaded]').click()")
        # type into the search box
        page.evaluate("const s = document.getElementById('search'); s.value = 'running_'; "
                      "s.dispatchEvent(new Event('input'))")
        assert set(page.evaluate(shown)) == {k for k in report.records if "running_" in k}
        page.evaluate("const t = document.getElementById('search'); t.value = ''; t.dispatchEvent(new Event('input'))")
        # click a module of the target tree, then a module of the source tree
        page.evaluate("document.querySelector('.node[data-side=target][data-path=head] > .row').click()")
        assert page.evaluate(shown) == ["head.weight", "head.bias"]
        page.evaluate("document.querySelector('.node[data-side=source][data-path=\"model.emb\"] > .row').click()")
        assert page.evaluate(shown) == ["emb.weight"]
        # the ambiguous key's candidates, with the line to paste
        lines = page.evaluate("[...document.querySelectorAll('tr[data-key=\"side.proj.weight\"] code.rename')]"
                              ".map(c => c.textContent)")
        assert lines == [r'rename={r"^model\.aux_a\.proj\.weight$": "side.proj.weight"}',
                         r'rename={r"^model\.aux_b\.proj\.weight$": "side.proj.weight"}']
        png = page.screenshot(tmp_path / "driven.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert page.requests() == [page_url]  # the document itself, nothing else
    finally:
        page.close()


def test_the_request_monitor_sees_a_page_that_does_fetch(tmp_path: Path) -> None:
    """The control for the test above: the same monitor catches a request, even one the CSP blocks."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
                     '<img src="http://127.0.0.1:9/pixel.png">')
    page = Page(tmp_path / "profile")
    try:
        page.goto(leaky.as_uri())
        assert "http://127.0.0.1:9/pixel.png" in page.requests()
    finally:
        page.close()


def test_a_screenshot_of_the_page_is_produced(page_url: str, tmp_path: Path) -> None:
    png = screenshot(page_url, tmp_path / "profile", tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1400, 1000)
    assert len(png) > 20_000  # a rendered page, not a blank one
