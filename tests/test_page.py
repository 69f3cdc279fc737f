"""The operator's page of `s3t serve` (`GET /`), in a real headless Chromium against a real
server: the shards table shows the routes `/v1/status` reports, the deletion log (after the
token is entered) the request ids and sample counts `/v1/deletions` reports, and no sample id
or text ever reaches the page.

The browser test is skipped only where Chromium or its driver is absent (scripts/setup.sh
installs both); the test of what the server sends runs everywhere."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from test_service import AUTH, TOKEN, free_port, samples_in, start_server, stop_server
from tiny import copy_run, toy_dataset

from s3t.config import S3TConfig
from s3t.data.samples import Dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 15  # every wait on the page is bounded by this
DEAD = "no live route: needs a retrain"  # the page's stage cell of a shard without a route

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian chromium and chromium-driver (scripts/setup.sh installs them)")


def chromium_driver(extra_args: tuple[str, ...] | list[str] = ()):  # -> webdriver.Chrome
    """Headless Chromium through the system chromedriver (Selenium Manager never downloads)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium refuses to start as root (CI containers) without it
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1600", "--no-first-run", "--disable-extensions",
                *extra_args):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    return driver


def train_run(run: Path, tiny_bert: str) -> Path:
    """A tiny 2 x 2 run, one ordering per shard (4 stages), with a validation split."""
    from s3t.engine import S3T

    config = S3TConfig(model=tiny_bert, shards=2, slices=2, budget=1, epochs=1, batch_size=8,
                       lora_r=4, lora_alpha=4, target_modules=["query", "key", "value"], seed=3)
    held_out = toy_dataset(12, seed=9)
    held_out = Dataset([f"e{i}" for i in range(12)], held_out.texts, held_out.labels,
                       label_names=held_out.label_names)
    S3T(config, run_dir=run).fit(toy_dataset(48, groups=True), held_out, progress=False).close()
    return run


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_bert) -> Path:
    """The module's one trained run, never served: each server gets a copy of it."""
    return train_run(tmp_path_factory.mktemp("page") / "run", tiny_bert)


@pytest.fixture(scope="module")
def run(pristine, tmp_path_factory) -> Path:
    return copy_run(pristine, tmp_path_factory.mktemp("page-served"))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """A real `s3t serve` subprocess on a free loopback port; its base URL."""
    port, log = free_port(), tmp_path_factory.mktemp("page-log") / "server.log"
    proc = start_server(run, port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()


# Each table is read in one script call, so a refresh of the page cannot interleave.
def shard_rows(driver) -> dict[str, list[str]]:
    """The shards table: shard -> [stage, depth] as the page shows them."""
    return driver.execute_script(
        "const out = {}; for (const r of document.querySelectorAll('#shards tbody tr')) "
        "out[r.dataset.shard] = [r.querySelector('.stage').innerText, "
        "r.querySelector('.depth').innerText]; return out;")


def deletion_rows(driver) -> dict[str, str]:
    """The deletion log: request id -> samples count as the page shows them."""
    return driver.execute_script(
        "const out = {}; for (const r of document.querySelectorAll('#deletions tbody tr')) "
        "if (r.offsetParent !== null) out[r.dataset.requestId] = "
        "r.querySelector('.samples').innerText; return out;")


def test_page_assets_are_served_open_with_a_strict_policy(server):
    page = httpx.get(server + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if src.startswith("data:"):  # the empty favicon: inline, never fetched
            continue
        assert src.startswith("/page/"), f"the page must load nothing from elsewhere: {src}"
        asset = httpx.get(server + src, timeout=10)
        assert asset.status_code == 200 and asset.content, src
    for name in ("__init__.py", "index.py"):
        assert httpx.get(server + "/page/" + name, timeout=10).status_code == 404, name
    # no route is /page/ itself: like every undeclared path (access.py), it needs the token
    assert httpx.get(server + "/page/", timeout=10).status_code == 401


@pytest.mark.browser
@needs_browser
def test_page_shows_the_shards_and_after_the_token_the_deletion_log(run, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # two deletions through the API: one sample, then two samples of another cell as an
    # erasure request (POST /v1/dsr)
    victims = [samples_in(run, (0, 0), 1), samples_in(run, (1, 1), 2)]
    train = toy_dataset(48, groups=True)
    texts = dict(zip(train.ids, train.texts, strict=True))
    response = httpx.post(server + "/v1/deletions", json={"sample_ids": victims[0]},
                          headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    response = httpx.post(server + "/v1/dsr", headers=AUTH, timeout=30, json={
        "subject_request_id": "page-subject", "submitted_time": "2026-12-06T10:00:00Z",
        "subject_identities": [{"identity_type": "sample_id", "identity_value": i}
                               for i in victims[1]]})
    assert response.status_code == 200 and response.json()["state"] == "erased", response.text
    status = httpx.get(server + "/v1/status", headers=AUTH, timeout=10).json()
    expected_shards = {m: [r["stage"], str(r["depth"])] if r else [DEAD, "0"]
                       for m, r in status["routes"].items()}
    # one shard lost its only ordering's first slice (no route), the other serves depth 1
    assert sorted(v[1] for v in expected_shards.values()) == ["0", "1"], expected_shards
    assert status["deletion_requests"] == 2
    assert status["erasures"] == {"received": 0, "exact": 0, "erased": 1, "restored": 0,
                                  "callbacks_pending": 0, "callbacks_failed": 0}
    log = httpx.get(server + "/v1/deletions?limit=100", headers=AUTH, timeout=10).json()
    expected_log = {c["request_id"]: str(len(c["samples"])) for c in log["certificates"]}
    assert sorted(expected_log.values()) == ["1", "2"]

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    # without the token (and without --open-status) the page shows no data of the run, and
    # says why
    wait.until(lambda d: "only with the API token" in d.find_element(By.ID, "connection").text,
               "the page never asked for the token")
    assert shard_rows(browser) == {} and deletion_rows(browser) == {}
    note = browser.find_element(By.ID, "deletions-note").text
    assert "needs the API token" in note

    field = browser.find_element(By.ID, "token")
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait.until(lambda d: shard_rows(d) == expected_shards,
               f"the shards table never showed {expected_shards}")
    assert browser.find_element(By.ID, "deletion-requests").text == "2"
    erasures = {state: browser.find_element(By.ID, "erasures-" + state).text for state in
                ("received", "exact", "erased", "restored", "callbacks-pending")}
    assert erasures == {"received": "0", "exact": "0", "erased": "1", "restored": "0",
                        "callbacks-pending": "0"}, erasures
    assert browser.find_element(By.ID, "erasures-note").text.startswith("1 erasure request ")
    wait.until(lambda d: deletion_rows(d) == expected_log,
               f"the deletion log never listed {expected_log}")
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('s3t-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0

    # only counts: no sample id (the run's ids are s0000..s0047) and no sample text
    source = browser.page_source
    assert not re.search(r"\bs00\d\d\b", source), "a sample id reached the page"
    for ids in victims:
        for sid in ids:
            assert texts[sid] not in source
    assert TOKEN not in source
    # no script error, no request refused, nothing the Content-Security-Policy blocked
    # (the reads refused before the token was entered are the only failed requests)
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "status of 401" not in e["message"]]
    assert not errors, errors

    # a wrong token: the log says so and shows nothing
    browser.find_element(By.ID, "forget-token").click()
    wait.until(lambda d: deletion_rows(d) == {}, "the log stayed after the token was forgotten")
    field.send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait.until(lambda d: "refused" in d.find_element(By.ID, "deletions-note").text,
               "a wrong token was not reported")
    assert deletion_rows(browser) == {}


# --- what an operator asks first: requests, latencies, audit, the client's id, the job ------
def traffic_rows(driver) -> dict[str, dict[str, str]]:
    """The requests table: kind -> {column class: text}."""
    return driver.execute_script(
        "const out = {}; for (const r of document.querySelectorAll('#traffic tbody tr')) {"
        "const row = {}; for (const c of ['requests', 'rate', 'errors', 'p50', 'p99']) "
        "row[c] = r.querySelector('.' + c).innerText; out[r.dataset.kind] = row; } return out;")


def shown_ms(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?) ms", text)
    assert match, f"not a latency: {text!r}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, pristine):
    """A server of its own on a fresh copy of the trained run (the other tests delete from
    theirs)."""
    run = copy_run(pristine, tmp_path_factory.mktemp("page-fresh"))
    port, log = free_port(), tmp_path_factory.mktemp("page-fresh-log") / "server.log"
    proc = start_server(run, port, log)
    try:
        yield run, f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@pytest.mark.browser
@needs_browser
def test_page_shows_rates_latencies_audit_client_ids_and_a_starting_job(fresh_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run, server = fresh_server
    # one prediction, one refused prediction (422), one deletion with the client's request id
    ok = httpx.post(server + "/v1/predict", json={"inputs": ["red cat sun"]}, headers=AUTH,
                    timeout=60)
    assert ok.status_code == 200, ok.text
    refused = httpx.post(server + "/v1/predict", json={"inputs": []}, headers=AUTH, timeout=30)
    assert refused.status_code == 422
    deleted = httpx.post(server + "/v1/deletions", headers=AUTH, timeout=30, json={
        "sample_ids": samples_in(run, (0, 0), 1), "request_id": "ticket-4711"})
    assert deleted.status_code == 200, deleted.text
    request_id = deleted.json()["request_id"]
    page = httpx.get(server + "/v1/deletions", headers=AUTH, timeout=10).json()
    assert page["client_request_ids"] == {request_id: ["ticket-4711"]}
    traffic = httpx.get(server + "/v1/status", headers=AUTH, timeout=10).json()["traffic"]
    assert (traffic["predictions"]["requests"], traffic["predictions"]["errors"]) == (2, 1)
    assert traffic["deletions"]["requests"] == 1 and traffic["deletions"]["window"] == 1

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait.until(lambda d: traffic_rows(d).get("deletions", {}).get("requests") == "1",
               "the requests table never showed the deletion")
    rows = traffic_rows(browser)
    assert rows["predictions"]["requests"] == "2" and rows["predictions"]["errors"] == "1 (0)"
    assert rows["deletions"]["errors"] == "0 (0)"
    # the latencies the server measured, as the page shows them (p50 = p99: one each)
    for kind in ("predictions", "deletions"):
        for q in ("p50", "p99"):
            assert shown_ms(rows[kind][q]) == pytest.approx(traffic[kind][f"{q}_ms"],
                                                            rel=0.01, abs=0.01), (kind, q)
        assert re.fullmatch(r"\d+\.\d /min|\d+\.\d\d /s", rows[kind]["rate"]), rows[kind]
    assert int(rows["requests"]["requests"]) >= 4

    # the deletion log: the client's request id beside s3t's; singular where there is one
    wait.until(lambda d: d.execute_script(
        "const c = document.querySelector('#deletions tbody tr .client-id');"
        "return c && c.innerText") == "ticket-4711", "the client's request id was not shown")
    assert browser.find_element(By.ID, "deletions-note").text.startswith("Deletion request 1 of 1,")
    summary = browser.find_element(By.ID, "run-summary").text
    assert "2 shards × 2 slices" in summary and "48 training samples" in summary

    # the audit: none yet, then the one the button runs, with the chain it checked
    assert "Not audited" in browser.find_element(By.ID, "audit-result").text
    browser.find_element(By.ID, "audit-now").click()
    wait.until(lambda d: "the invariant holds" in d.find_element(By.ID, "audit-result").text,
               "the audit's outcome never showed")
    assert "0 findings" in browser.find_element(By.ID, "audit-result").text
    assert browser.find_element(By.ID, "chain-status").text == (
        "Certificate chain: intact, 1 certificate checked.")

    # the plot over time: clock-time ticks, and a y axis scaled to the data (its lowest and
    # highest ticks within one step of the lowest and highest point)
    axis = browser.execute_script(
        "const svg = document.querySelector('#plot-time svg');"
        "const ys = [...svg.querySelectorAll('text.tick.y')].map((t) => "
        "[parseFloat(t.textContent), parseFloat(t.getAttribute('y')) - 4]);"
        "return {x: [...svg.querySelectorAll('text.tick.x')].map((t) => t.textContent), ys, "
        "cy: [...svg.querySelectorAll('circle')].map((c) => parseFloat(c.getAttribute('cy')))};")
    assert axis["x"] and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", x) for x in axis["x"]), axis
    (v0, y0), (v1, y1) = axis["ys"][0], axis["ys"][-1]  # value (%) and its height on the plot
    shown_values = [v0 + (cy - y0) * (v1 - v0) / (y1 - y0) for cy in axis["cy"]]
    step = axis["ys"][1][0] - v0
    assert -0.2 <= min(shown_values) - v0 < step - 1e-6, (axis, shown_values)
    assert -0.2 <= v1 - max(shown_values) < step - 1e-6, (axis, shown_values)

    # a retrain: while its job is queued or its trainer loads, the page never says "idle"
    started = httpx.post(server + "/v1/retrain", headers=AUTH, timeout=30)
    assert started.status_code == 202, started.text
    job_id = started.json()["job"]["id"]
    read = ("const dd = (c) => { const e = document.querySelector('#retrain-job .' + c); "
            "return e ? e.innerText : null; };"
            "const s = document.querySelector('#retrain-job .state');"
            "return [document.getElementById('training').innerText, s ? s.innerText : null, "
            "dd('job-elapsed'), dd('job-end'), document.querySelector('#retrain-job dl') ? "
            "document.querySelector('#retrain-job dl').id : null];")
    seen: list[list] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        browser.find_element(By.ID, "refresh-now").click()
        time.sleep(0.3)
        sample = browser.execute_script(read)
        if sample[4] != "job-" + job_id:
            continue  # the page has not read the job yet
        seen.append(sample)
        if sample[1] in ("succeeded", "failed", "cancelled"):
            break
    active = [s for s in seen if s[1] in ("queued", "running")]
    assert active, f"the page never showed the job active: {seen}"
    assert not [s for s in active if s[0] == "idle"], f"'idle' while a job started: {active}"
    assert any(s[0] == "starting" for s in active), active
    assert all(re.fullmatch(r"(queued for )?\d+ s|\d+ min \d\d s", s[2]) for s in active), active
    assert seen[-1][1] == "succeeded", seen[-1]
    assert seen[-1][3].startswith("ended "), seen[-1]
    job = httpx.get(f"{server}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
    assert job["stages_done"] >= 1 and job["estimated_end"] is not None
