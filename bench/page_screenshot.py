"""The operator's page of `s3t serve`, photographed in headless Chromium.

Why: the page (`GET /`) is the operator's view of a live service: shards and their routes,
capacity and validation accuracy over time, the retrain job, the deletion log. This script
serves a run the way an operator would (`s3t serve RUN --token-file F` on a free 127.0.0.1
port), sends a few predictions and deletion requests (each with a client request id)
through the API, asks for a retrain and, once it has finished, sends one more deletion, so
that the plots show capacity falling and recovering and the requests table has latencies;
it audits the run once (the page's audit line). It then loads the page in the system
Chromium (Selenium, `--headless=new`), enters the token, waits until the deletion log lists
every request the API lists, and saves a full-page screenshot to bench/results/operator-page.png.

Without RUN it trains a small WordNet/MiniLM run (240 nouns, 3 shards x 3 slices, 80 more
as the validation split); with RUN it serves a copy (the given run is never changed).

    python -m bench page_screenshot [RUN] [--deletions 4] [--out PATH]
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import Server
from s3t.run.card import RUN_FILE as CARD  # the run card: every run has one

WAIT_S = 30          # every wait on the page
RETRAIN_WAIT_S = 900  # the retrain job
WIDTH = 1280


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", type=Path, help="a trained run to serve (a copy of it)")
    p.add_argument("--deletions", type=int, default=4,
                   help="deletion requests before the retrain (one more after it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="as the other benchmarks take it: the first one is --seed")
    p.add_argument("--quick", action="store_true",
                   help="accepted with the other benchmarks' flags; this run is small already")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run (40 nouns, 2 x 2) and one deletion: checks that it works")
    p.add_argument("--out", type=Path, default=None,
                   help="the PNG to write (default: operator-page.png in the results directory)")
    args = p.parse_args(argv)
    if args.seeds:
        args.seed = args.seeds[0]
    if args.smoke:
        harness.start_smoke()
        args.deletions = 1
    if args.deletions < 1:
        p.error("--deletions must be at least 1")
    if args.run is not None and not (args.run / CARD).is_file():
        p.error(f"{args.run} is not an s3t run (no {CARD}): train one with `s3t train`")
    if args.out is None:
        args.out = harness.result_path("operator-page", False, ".png")
    return args


def the_run(args: argparse.Namespace) -> Path:
    """A run this script may change: a copy of RUN, or a freshly trained small one."""
    target = harness.tmp_run_dir("page")
    if args.run is not None:
        shutil.copytree(args.run, target)
        return target
    from s3t.config import S3TConfig
    from s3t.engine import S3T

    n, n_val, grid = (40, 16, 2) if args.smoke else (240, 80, 3)
    train, validation = harness.wordnet_split(n, n_val, args.seed)
    config = S3TConfig(model=harness.backbone(),
                       shards=grid, slices=grid, epochs=1, max_seq_len=32, seed=args.seed)
    with harness.stopwatch() as t:
        S3T(config, run_dir=target).fit(train, validation, progress=False).close()
    print(f"trained {grid} x {grid} on {len(train)} samples in {t['s']:.1f} s", flush=True)
    return target


def retained_ids(run: Path) -> list[str]:
    from s3t.run import Run

    ledger = Run.open(run, repair=False).ledger
    try:
        rows = ledger.conn.execute("SELECT sample_id FROM samples WHERE deleted_version IS NULL "
                                   "ORDER BY sample_id").fetchall()
    finally:
        ledger.close()
    return [r[0] for r in rows]


def chromium_driver() -> Any:
    """Headless system Chromium through the system chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise SystemExit("needs Debian chromium and chromium-driver: run scripts/setup.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},1000", "--no-first-run", "--hide-scrollbars"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(WAIT_S)
    return chrome


def exercise(base: str, token: str, ids: list[str], deletions: int, rng: random.Random) -> None:
    """Deletions, a retrain (when the server offers it), then one more deletion."""
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    pool = rng.sample(ids, k=min(len(ids), 3 * (deletions + 1)))

    def predict() -> None:
        for texts in (["a small dog"], ["a tall tree", "a river", "an old house"]):
            httpx.post(f"{base}/v1/predict", json={"inputs": texts}, headers=auth,
                       timeout=60).raise_for_status()

    def delete(n: int) -> None:
        batch = [pool.pop() for _ in range(min(n, len(pool)))]
        if not batch:
            return
        predict()
        response = httpx.post(f"{base}/v1/deletions", headers=auth, timeout=60, json={
            "sample_ids": batch, "request_id": f"ticket-{4700 + len(pool)}"})
        response.raise_for_status()
        certificate = response.json()
        print(f"deleted {len(batch)} samples: {len(certificate['erased_stages'])} stages erased, "
              f"{certificate['live_shards']} live shards", flush=True)
        time.sleep(1.5)  # spread the points of the history over time

    for k in range(deletions):
        delete(1 + k % 3)
    started = httpx.post(f"{base}/v1/retrain", headers=auth, timeout=60)
    if started.status_code == 202:
        job = started.json()["job"]
        deadline = time.monotonic() + RETRAIN_WAIT_S
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
            job = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth, timeout=30).json()
        print(f"retrain job {job['id']}: {job['state']}, {job['stages_done']} stages", flush=True)
    else:
        print(f"no retrain over HTTP (POST /v1/retrain: {started.status_code})", flush=True)
    delete(2)
    # let the service measure validation accuracy once more (bounded)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        history = httpx.get(f"{base}/v1/history", headers=auth, timeout=30)
        if history.status_code != 200 or history.json()["points"][-1]["event"] == "evaluation":
            break
        time.sleep(1)
    httpx.get(f"{base}/v1/audit", headers=auth, timeout=300).raise_for_status()


def photograph(base: str, token: str, out: Path) -> dict[str, Any]:
    """Load the page, enter the token, wait for the full deletion log; a full-page PNG."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    total = httpx.get(f"{base}/v1/deletions?limit=1", headers={
        "Authorization": f"Bearer {token}"}, timeout=30).json()["total"]
    chrome = chromium_driver()
    try:
        chrome.get(base + "/")
        wait = WebDriverWait(chrome, WAIT_S)
        # the status needs the token (unless --open-status): enter it, then a refresh completes
        # the tokenless first refresh ends by showing the connection notice: its 401s are
        # expected, and reading the log drains it (only errors after the token count)
        wait.until(lambda d: d.find_element(By.ID, "connection").is_displayed())
        chrome.get_log("browser")
        chrome.find_element(By.ID, "token").send_keys(token)
        chrome.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.refreshes"))
        wait.until(lambda d: d.execute_script(
            "return document.querySelectorAll('#deletions tbody tr').length") == min(total, 50))
        chrome.find_element(By.ID, "auto-refresh").click()  # hold still for the picture
        height = chrome.execute_script("return document.documentElement.scrollHeight")
        chrome.set_window_size(WIDTH, height + 200)  # the window's frame is not page
        chrome.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)  # one layout after the resize
        out.parent.mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(out))
        errors = [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        shown = {"shards": len(chrome.find_elements(By.CSS_SELECTOR, "#shards tbody tr")),
                 "deletion_rows": total, "console_errors": errors}
    finally:
        chrome.quit()
    return shown


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rng = random.Random(args.seed)
    run = the_run(args)
    ids = retained_ids(run)
    token = secrets.token_urlsafe(24)
    token_file = run.parent / "token.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    server = Server(run, token_file, max_batch=32, max_wait_ms=5,
                    log_path=run.parent / "server.log").start()
    try:
        print(f"serving {run} at {server.base_url} (ready in {server.startup_s:.1f} s)", flush=True)
        exercise(server.base_url, token, ids, args.deletions, rng)
        shown = photograph(server.base_url, token, args.out)
    finally:
        server.stop()
    print(f"page showed {shown['shards']} shards and {shown['deletion_rows']} deletion requests; "
          f"browser console errors: {shown['console_errors'] or 'none'}")
    print(f"# wrote {args.out}")
    return 1 if shown["console_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
