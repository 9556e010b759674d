"""The search page on the real stack: plain HTTP checks, then a real browser (Chromium + Playwright).

The browser tests play a person: searches, likes and dislikes (mouse and keyboard), sees an
error message from the API, watches the feedback counted in the panel, gives enough feedback
for a training run, and sees the new version served; then narrows a search by a facet and reads
the next page. Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.messaging.broker import free_port
from shared.store import open_store
from tests.conftest import ROOT, tiny_stack
from tests.integration.served import Served
from tools.localstack import LocalStack, wait_for

ARTIFACTS = ROOT / "test-artifacts"
THRESHOLD = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LocalStack]:
    # Any candidate gets through (margin 1, no check of the labels against BM25): the gate
    # itself is tested with the trainer. The person here rates by rank, and the tiny model's
    # random dense scores decide much of version 0's order, so BM25 may disagree with them.
    # Promoted offline, so the page shows the new version at once (users deciding: test_online).
    with tiny_stack(tmp_path_factory.mktemp("page"), tiny_model, promotion="offline",
                    train_min_new_feedback=THRESHOLD, gate_margin=1.0, gate_min_prior_auc=0.0,
                    num_epochs=1) as running:
        yield running


def raw_get(base_url: str, path: str) -> tuple[int, str]:
    """GET with the path sent byte for byte (HTTP clients would normalise `..` away)."""
    url = httpx.URL(base_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_the_page_is_served_with_its_config_and_no_secrets(stack: LocalStack) -> None:
    reranker = stack.url("reranker")
    response = httpx.get(f"{reranker}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = response.text
    for fragment in ('role="search"', '<label for="query"', 'id="use-reranker"', 'aria-live="polite"',
                     'name="viewport"', 'src="static/page.js"'):
        assert fragment in page, fragment
    raw = re.search(r'data-config="([^"]*)"', page)
    assert raw is not None
    config = json.loads(raw.group(1).replace("&quot;", '"'))
    assert config["feedbackUrl"] == "api/feedback"
    assert set(config) == {"searchUrl", "feedbackUrl", "interactionsUrl", "statusUrl", "reportsUrl", "pollMs",
                           "topK", "facets", "languages"}
    assert config["facets"] == ["subject", "level", "type", "language"] and config["languages"] == ["en"]
    assert "{{" not in page
    for asset, kind in (("static/page.js", "javascript"), ("static/page.css", "text/css")):
        served = httpx.get(f"{reranker}/{asset}", timeout=10)
        assert served.status_code == 200, asset
        assert kind in served.headers["content-type"], asset


def test_status_gathers_model_progress_and_runs(stack: LocalStack) -> None:
    status = httpx.get(f"{stack.url('reranker')}/api/ui/status", timeout=10).json()
    assert set(status) == {"model", "progress", "runs", "experiment", "last_experiment", "errors"}
    assert status["errors"] == {}
    assert status["experiment"] is None and status["last_experiment"] is None  # promoted offline here
    assert status["model"]["version"] == "v0"
    assert status["model"]["trained_at"] is None
    assert status["progress"]["threshold"] == THRESHOLD
    assert status["progress"]["new_feedback"] == 0
    assert status["runs"] == []


@pytest.mark.parametrize("path", [
    "/reports/../x", "/reports/..%2Fx", "/reports/%2e%2e", "/reports/..%2F..%2Fetc%2Fpasswd",
    "/reports/v0001%2F..%2F..%2Feduranker.db", "/reports/.tmp-v0001", "/reports/v9999", "/reports/notes.txt",
])
def test_reports_only_serve_registry_versions(stack: LocalStack, path: str) -> None:
    status, body = raw_get(stack.url("reranker"), path)
    assert status == 404, (path, body)
    assert "root:" not in body and "SQLite" not in body


def test_feedback_through_the_page_keeps_the_collectors_rules(stack: LocalStack) -> None:
    reranker = stack.url("reranker")
    search = httpx.post(f"{reranker}/api/reranking/search-with-reranking",
                        json={"query_text": "python for data analysis", "top_k": 3}, timeout=30).json()
    shown = search["results"][0]["resource_id"]
    cases: list[tuple[Any, int, str]] = [
        ({"inference_id": "no-such-inference", "resource_id": shown, "feedback": "like"}, 404,
         "send the inference_id returned by a search"),
        ({"inference_id": search["inference_id"], "resource_id": "res-unknown", "feedback": "like"}, 422,
         "was not among the results"),
        ({"inference_id": search["inference_id"], "resource_id": shown, "feedback": "love"}, 422, "like"),
    ]
    for payload, status, message in cases:
        forwarded = httpx.post(f"{reranker}/api/feedback", json=payload, timeout=30)
        direct = httpx.post(f"{stack.url('collector')}/api/feedback", json=payload, timeout=30)
        assert forwarded.status_code == direct.status_code == status, forwarded.text
        assert forwarded.json() == direct.json()
        assert message in forwarded.text
    too_big = httpx.post(f"{reranker}/api/feedback", content=b"x" * 20_000,
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert too_big.status_code == 413
    assert "one feedback at a time" in too_big.json()["detail"]


def test_a_part_that_is_down_is_reported_and_the_rest_still_shown(stack: LocalStack) -> None:
    """A second reranker whose aggregator and collector addresses answer nothing."""
    from services.reranker.app import create_app

    closed = f"http://127.0.0.1:{free_port()}"
    settings = stack.settings.model_copy(update={"aggregator_url": closed, "collector_url": closed})
    with Served(create_app(settings), free_port(), "reranker") as served, \
            httpx.Client(base_url=served.url, timeout=30) as client:
        status = client.get("/api/ui/status").json()
        assert status["model"]["version"] == "v0"
        assert status["progress"] is None
        assert closed in status["errors"]["progress"]
        assert status["runs"] == []
        refused = client.post("/api/feedback",
                              json={"inference_id": "x", "resource_id": "y", "feedback": "like"})
        assert refused.status_code == 503
        assert "was not saved" in refused.json()["detail"]


def test_the_redirect_goes_only_to_the_shown_resources_catalogue_address(stack: LocalStack) -> None:
    reranker, collector = stack.url("reranker"), stack.url("collector")
    search = httpx.post(f"{reranker}/api/reranking/search-with-reranking",
                        json={"query_text": "calculus derivatives exercises", "top_k": 3}, timeout=30).json()
    first = search["results"][0]
    before = httpx.get(f"{collector}/api/feedback/stats", timeout=30).json()["interactions"]["opens"]
    go = f"{reranker}/go/{search['inference_id']}"
    hijack = httpx.get(f"{go}/{first['resource_id']}", params={"url": "https://evil.example/", "next": "/x"},
                       timeout=30)
    assert hijack.status_code == 303 and hijack.headers["location"] == first["url"]  # never the request's
    opened = httpx.get(f"{collector}/api/feedback/stats", timeout=30).json()["interactions"]["opens"]
    assert opened == before + 1
    shown = {r["resource_id"] for r in search["results"]}
    other = next(f"res-{n:04d}" for n in range(1, 400) if f"res-{n:04d}" not in shown)
    unknown = f"{reranker}/go/no-such-inference/{first['resource_id']}"
    for path, status, message in ((f"{go}/{other}", 422, "not among the results"),
                                  (unknown, 404, "not found")):
        refused = httpx.get(path, timeout=30)
        assert refused.status_code == status and "location" not in refused.headers, refused.text
        assert message in refused.json()["detail"]


# The browser


def give_feedback(page: Any, expect: Any, rank: int, label: str, keyboard: bool = False) -> None:
    result = page.locator("#results > li").nth(rank - 1)
    button = result.get_by_role("button", name=label.capitalize(), exact=True)
    if keyboard:
        button.focus()
        page.keyboard.press("Enter")
    else:
        button.click()
    expect(result.locator(".feedback-status")).to_have_text(re.compile("Thanks"), timeout=15_000)
    expect(button).to_have_attribute("aria-pressed", "true")


def test_a_person_opens_a_result_and_comes_back_and_both_are_recorded(stack: LocalStack,
                                                                      browser: Any) -> None:
    """The title is a plain link; its open goes as a beacon, and the stay is measured on return."""
    from playwright.sync_api import expect

    reranker, collector = stack.url("reranker"), stack.url("collector")
    page = browser.new_page()
    page.route("https://*.example.org/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<h1>The resource</h1>"))
    page.goto(f"{reranker}/")
    page.get_by_label("Search resources").fill("introduction to neural networks")
    page.keyboard.press("Enter")
    link = page.locator("#results > li").first.locator("a.result-link")
    expect(link).to_have_count(1, timeout=15_000)
    href = link.get_attribute("href")
    assert href and href.startswith("https://")  # the resource's own address: the link is not rewritten
    before = httpx.get(f"{collector}/api/feedback/stats", timeout=30).json()["interactions"]
    link.click()
    expect(page.locator("h1")).to_have_text("The resource", timeout=15_000)
    page.go_back()
    expect(page.locator("#search-form")).to_be_visible(timeout=15_000)

    def recorded() -> dict | None:
        now = httpx.get(f"{collector}/api/feedback/stats", timeout=30).json()["interactions"]
        return now if now["opens"] == before["opens"] + 1 and now["since_last_training"] > 0 else None

    wait_for(recorded, 30, 0.2, "the open recorded")

    async def dwell() -> list:
        db = await open_store(stack.settings.store_url)
        try:
            return [i.dwell_s for i in await db.list_interactions(include_test=True) if i.session_id]
        finally:
            await db.close()

    def returned() -> bool:  # the store read on a thread of its own: Playwright's loop runs on this one
        with ThreadPoolExecutor(1) as reader:
            return any(d is not None for d in reader.submit(asyncio.run, dwell()).result())

    wait_for(returned, 30, 0.2, "the return's dwell")
    page.close()


def test_a_person_searches_gives_feedback_and_sees_the_model_retrain(stack: LocalStack, browser: Any) -> None:
    from playwright.sync_api import expect

    reranker = stack.url("reranker")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(f"{reranker}/")
    expect(page.locator("#model-version")).to_have_text("v0", timeout=15_000)
    expect(page.locator("#progress-threshold")).to_have_text(str(THRESHOLD))
    expect(page.locator("#progress-new")).to_have_text("0")

    # Search with the keyboard: type, Enter.
    page.get_by_label("Search resources").fill("machine learning tutorial")
    page.keyboard.press("Enter")
    results = page.locator("#results > li")
    expect(results).to_have_count(10, timeout=15_000)
    expect(page.locator("#search-status")).to_contain_text("ranked by v0")
    expect(results.first.locator(".rank")).to_have_text("#1")
    expect(results.first.locator(".rerank-score")).to_have_text(re.compile(r"^-?\d+\.\d{3}$"))

    # The first stage alone, then back.
    page.get_by_label("Reranker on").uncheck()
    expect(page.locator("#search-status")).to_contain_text("first stage only")
    expect(results.first.locator(".rerank-score")).to_have_count(0)
    assert "reranker=off" in page.url
    page.get_by_label("Reranker on").check()
    expect(page.locator("#search-status")).to_contain_text("ranked by v0")

    give_feedback(page, expect, 1, "like")
    give_feedback(page, expect, 2, "dislike", keyboard=True)
    expect(page.locator("#progress-new")).to_have_text("2", timeout=30_000)
    expect(page.locator("#progress-like")).to_have_text("1")
    expect(page.locator("#progress-dislike")).to_have_text("1")
    expect(page.locator("#progress-state")).to_have_text(re.compile("Not yet|more feedback"))

    # A click the collector refuses: the person reads the collector's own message.
    def unknown_inference(route: Any) -> None:
        payload = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**payload, "inference_id": "no-such-inference"}))

    page.route("**/api/feedback", unknown_inference)
    results.nth(2).get_by_role("button", name="Like", exact=True).click()
    expect(results.nth(2).locator(".feedback-status")).to_contain_text(
        "Not saved: inference 'no-such-inference' not found", timeout=15_000)
    page.unroute("**/api/feedback")

    # Enough feedback for the next training run, on two more queries.
    for query in ("linear algebra for beginners", "python for data analysis"):
        page.get_by_label("Search resources").fill(query)
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.locator("#search-status")).to_contain_text(query, timeout=15_000)
        for rank, label in ((1, "like"), (2, "like"), (3, "dislike"), (4, "dislike"), (5, "dislike")):
            give_feedback(page, expect, rank, label)
    page.screenshot(path=str(ARTIFACTS / "search-page-feedback.png"))

    # The aggregator asks for training, the trainer promotes v0001, the page follows by itself.
    expect(page.locator("#model-version")).to_have_text("v0001", timeout=180_000)
    expect(page.locator("#announcer")).to_contain_text("v0001", timeout=15_000)
    expect(page.locator("#new-model")).to_be_visible()
    promoted = page.locator("#runs > li[data-status=promoted]")
    expect(promoted).to_have_count(1, timeout=15_000)
    report_link = promoted.get_by_role("link", name="Report for v0001")
    report = page.request.get(f"{reranker}/{report_link.get_attribute('href')}")
    assert report.status == 200
    assert "Training report: v0001" in report.text()
    expect(page.locator("#model-trained")).not_to_have_text(re.compile("never"))
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "search-page.png"))

    page.get_by_role("button", name="Search again with it").click()
    expect(page.locator("#search-status")).to_contain_text("ranked by v0001", timeout=15_000)
    expect(page.locator("#new-model")).to_be_hidden()

    # A phone-sized screen: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#panel")).to_be_visible()
    expect(page.locator("#model-summary-link")).to_contain_text("Model v0001")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "search-page-phone.png"), full_page=True)
    assert crashes == []


def test_a_person_narrows_by_a_facet_and_reads_the_next_page(stack: LocalStack, browser: Any) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(f"{stack.url('reranker')}/")
    expect(page.locator("#language-choice")).to_be_hidden()  # one language in this catalogue
    page.get_by_label("Search resources").fill("machine learning tutorial")
    page.keyboard.press("Enter")
    results, status = page.locator("#results > li"), page.locator("#search-status")
    expect(results).to_have_count(10, timeout=15_000)
    expect(status).to_contain_text(re.compile(r"^10 of \d+ results"))

    beginner = page.get_by_role("checkbox", name=re.compile(r"^beginner \(\d+\)$"))
    label = page.locator(f"label[for='{beginner.get_attribute('id')}']").text_content() or ""
    count = int(re.search(r"\((\d+)\)", label).group(1))  # type: ignore[union-attr]
    assert count > 10
    beginner.check()
    expect(status).to_contain_text(f"10 of {count} results", timeout=15_000)
    expect(status).to_contain_text("(filtered)")
    assert all("beginner" in (meta or "") for meta in results.locator(".meta").all_text_contents())
    expect(page.get_by_role("checkbox", name=re.compile(r"^beginner"))).to_be_checked()

    page.get_by_role("button", name="More results").click()
    expect(results).to_have_count(min(20, count), timeout=15_000)
    expect(status).to_contain_text(f"{min(20, count)} of {count} results")
    ids = [item.get_attribute("data-resource-id") for item in results.all()]
    assert len(set(ids)) == len(ids)
    assert results.locator(".rank").all_text_contents() == [f"#{n}" for n in range(1, len(ids) + 1)]
    assert all("beginner" in (meta or "") for meta in results.locator(".meta").all_text_contents())
    page.screenshot(path=str(ARTIFACTS / "search-page-facets.png"), full_page=True)

    # Liking a result of the second page goes to that page's own inference.
    give_feedback(page, expect, 12, "like")
    assert crashes == []
