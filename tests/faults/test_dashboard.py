"""The dashboard (``GET /``) in a real headless Chromium, against real workers: it follows jobs as they run,
cancels one, and with ``API_TOKENS`` shows nothing but its token prompt until it has a token.

The browser is the system's ``chromium`` (Debian's package), driven by Playwright; no browser is ever
downloaded. Without one the tests skip, unless ``DATAJOBS_REQUIRE_BROWSER=1`` (``.ci/run`` sets it), when
they fail. ``DATAJOBS_SCREENSHOT=docs/dashboard.png`` also writes the screenshot (always saved in the
test's tmp_path) to that path of the repository, for the README.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from tests.faults.conftest import sleep_step, submit, wait_for

REPO = Path(__file__).resolve().parents[2]
TOKENS = ("dash-token-a", "dash-token-b")
#: How long the page may take to show a change, in ms (Playwright's unit): it refreshes every 2 s, and a
#: wait answers at the change.
SHOWS_WITHIN = 8_000
#: A step's seconds as the page shows them.
SECONDS = re.compile(r"^\d+\.\d{3}$")


def _no_browser(reason):
    if os.environ.get("DATAJOBS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DATAJOBS_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium: the system's, never one Playwright would download."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[test]')")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _no_browser("no chromium on the PATH (apt-get install chromium chromium-driver)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 640})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def stack(browser, shared_stack):
    return shared_stack("pair")  # one worker, two processes: a third job queues behind two


@pytest.fixture(scope="module")
def token_stack(browser, shared_stack):
    return shared_stack("pair", API_TOKENS=",".join(TOKENS))  # a gateway of its own before the same workers


def row(page, job_id):
    return page.locator(f'#jobs tbody tr[data-job-id="{job_id}"]')


def save_screenshot(page, tmp_path):
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    wanted = os.environ.get("DATAJOBS_SCREENSHOT")
    if wanted:
        target = REPO / wanted
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", target)


def test_the_page_follows_jobs_from_queued_to_completed_and_cancels_a_running_one(stack, page, tmp_path):
    from playwright.sync_api import expect

    waits = []
    page.on("request", lambda request: waits.append(request) if "wait=" in request.url else None)
    # Both processes busy, so the next two jobs queue.
    blockers = [submit(stack.url, [sleep_step(2.5)]).json()["job_id"] for _ in range(2)]
    for job_id in blockers:
        wait_for(stack.url, job_id, ("processing",), timeout=20)
    cleaned = submit(stack.url, ["drop_nulls"], dataset=[{"id": 1}, {"id": None}, {"id": 3}]).json()["job_id"]
    running = submit(stack.url, [sleep_step(0.25)] * 60).json()["job_id"]  # 15 s, unless cancelled
    cast = {"name": "cast_types", "params": {"types": {"name": "int"}}}
    failing = submit(stack.url, ["drop_nulls", cast], dataset=[{"name": "Ada"}]).json()["job_id"]

    page.goto(f"{stack.url}/")
    page.evaluate("window.notReloaded = true")
    for job_id in (cleaned, running):
        expect(row(page, job_id).locator(".badge")).to_have_text("started")
    expect(row(page, cleaned).locator(".badge")).to_have_text("completed", timeout=SHOWS_WITHIN)
    expect(row(page, cleaned).locator(".col-rows-in")).to_have_text("3")
    expect(row(page, cleaned).locator(".col-rows-out")).to_have_text("2")
    expect(row(page, running).locator(".badge")).to_have_text("processing", timeout=SHOWS_WITHIN)
    assert page.evaluate("window.notReloaded") is True  # all of it without a reload
    # Each job not ended was followed with a wait naming the body the page had.
    followed = [request for request in waits if f"/jobs/{cleaned}?wait=" in request.url]
    assert followed and all(request.headers.get("if-none-match") for request in followed)

    # The completed job's detail: its step, rows in and out, and its result.
    row(page, cleaned).click()
    expect(page.locator("#detail-id")).to_have_text(cleaned)
    steps = page.locator("#detail-steps tbody tr")
    expect(steps).to_have_count(1)
    expect(steps.first.locator("td")).to_have_text(["0", "drop_nulls", "3", "2", SECONDS])
    expect(page.locator("#detail-cancel")).to_be_hidden()
    href = page.locator("#result-csv").get_attribute("href")
    assert href == f"/jobs/{cleaned}/result?format=csv"
    downloaded = requests.get(f"{stack.url}{href}", timeout=10)
    assert downloaded.status_code == 200 and downloaded.text.split() == ['"id"', "1", "3"]

    # A failed job's detail: its error, as the API gives it.
    failed = wait_for(stack.url, failing)
    assert failed["status"] == "failed"
    row(page, failing).click()
    expect(page.locator("#detail-error")).to_be_visible()
    expect(page.locator("#detail-error-type")).to_have_text(failed["error"]["type"])
    expect(page.locator("#detail-error-step")).to_have_text("at step 1")
    expect(page.locator("#detail-error-message")).to_have_text(failed["error"]["message"])

    # The running one: the workers panel names it; Cancel ends it, on the page and in the API.
    row(page, running).click()
    expect(page.locator("#detail-id")).to_have_text(running)
    expect(page.locator(f'#workers button[data-job-id="{running}"]')).to_be_visible(timeout=SHOWS_WITHIN)
    expect(page.locator("#detail-steps-later")).to_be_visible()
    save_screenshot(page, tmp_path)
    page.locator("#detail-cancel").click()
    expect(page.locator("#detail-status")).to_have_text("cancelled")
    expect(row(page, running).locator(".badge")).to_have_text("cancelled")
    expect(page.locator("#detail-cancel")).to_be_hidden()
    body = requests.get(f"{stack.url}/jobs/{running}", timeout=10).json()
    assert body["status"] == "cancelled" and body["error"]["type"] == "cancelled"

    # The status filter asks the API for those statuses only.
    page.locator('#status-filter input[value="completed"]').check()
    expect(row(page, running)).to_have_count(0)
    expect(row(page, cleaned)).to_be_visible()
    expect(page.locator("#jobs tbody tr .badge")).not_to_contain_text(["cancelled"])


def test_with_tokens_the_page_shows_only_its_prompt_until_given_a_valid_token(token_stack, page):
    from playwright.sync_api import expect

    auth = {"Authorization": f"Bearer {TOKENS[0]}"}
    job_id = submit(token_stack.url, ["drop_nulls"], headers=auth).json()["job_id"]
    wait_for(token_stack.url, job_id, headers=auth)
    sent = []
    page.on("request", lambda request: sent.append(request.headers.get("authorization")))

    page.goto(f"{token_stack.url}/")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    assert job_id[:8] not in page.locator("body").inner_text()

    page.locator("#token-input").fill("not-a-token")
    page.locator("#token-input").press("Enter")
    expect(page.locator("#token-message")).to_contain_text("refused")
    expect(page.locator("#main")).to_be_hidden()

    page.locator("#token-input").fill(TOKENS[0])
    page.locator("#token-input").press("Enter")
    expect(row(page, job_id).locator(".badge")).to_have_text("completed")
    expect(page.locator("#token-form")).to_be_hidden()
    assert f"Bearer {TOKENS[0]}" in sent
    assert page.evaluate("sessionStorage.getItem('datajobs.token')") == TOKENS[0]

    page.reload()  # asked once: the tab keeps it
    expect(row(page, job_id)).to_be_visible()
    expect(page.locator("#token-form")).to_be_hidden()

    # The result link works with a token too (a plain link would go without it: 401).
    row(page, job_id).click()
    with page.expect_download() as download:
        page.locator("#result-csv").click()
    assert download.value.suggested_filename == f"{job_id}.csv"
    assert Path(download.value.path()).read_text().split() == ['"id"', "1"]

    # A 401 from any call (here: the token no longer valid) brings the prompt back and takes the jobs away.
    page.evaluate("sessionStorage.setItem('datajobs.token', 'revoked')")
    expect(page.locator("#token-form")).to_be_visible(timeout=SHOWS_WITHIN)
    expect(page.locator("#main")).to_be_hidden()
    expect(row(page, job_id)).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('datajobs.token')") is None
