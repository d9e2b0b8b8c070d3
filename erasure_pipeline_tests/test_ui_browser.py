"""The Dagster UI in a real headless browser (Debian's ``chromium``, driven by Playwright): what an operator sees
after a policy change. CI requires the browser (``ERASURE_PIPELINE_REQUIRE_BROWSER=1``); elsewhere a missing one skips."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.servers import answers_http, free_port, serving
from erasure_pipeline_tests.test_operator_view import SHARDS, WHY, change_c, staleness_tick

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ERASURE_PIPELINE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("ERASURE_PIPELINE_SCREENSHOTS", "")) if os.environ.get("ERASURE_PIPELINE_SCREENSHOTS") else None
pytestmark = pytest.mark.slow


def _browser_or_skip() -> None:
    missing = []
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing.append(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("no playwright (pip install -e '.[dev]')")
    if missing:
        message = "; ".join(missing)
        if os.environ.get("ERASURE_PIPELINE_REQUIRE_BROWSER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def webserver(home: Path):
    """``dagster-webserver`` (the UI alone, no daemon) on the project home the environment points at."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"],
                 log=home / "webserver.log", ready=answers_http(f"{base}/server_info"), what="the webserver", cwd=REPO):
        _community_dialog_seen(base)
        yield base


def _community_dialog_seen(base: str) -> None:
    """The UI opens a community sign-up dialog one second after a page loads on a fresh instance; its backdrop
    swallows clicks (a CI run failed on exactly that race). The UI's own mutation marks it seen, server-side."""
    body = json.dumps({"query": "mutation SetNuxSeen { setNuxSeen }"}).encode()
    request = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["data"]["setNuxSeen"] is True


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")


def _shot(page, name: str, tmp_path: Path) -> None:
    for folder in (tmp_path, SCREENSHOTS):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_after_a_policy_change_the_ui_shows_each_stale_shard_partition_and_why(demo_home, tmp_path):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    change_c(demo_home)
    defs, _policy = defs_and_policy()
    staleness_tick(defs, instance(), None)  # what the daemon's staleness_sensor does within 30 s of the change
    with webserver(demo_home) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        _open(page, f"{base}/assets/shard_models?view=checks&checkDetail=up_to_date")
        expect(page.get_by_text("Failed").first).to_be_visible(timeout=20_000)
        _shot(page, "shard_models_checks", tmp_path)
        page.get_by_text("Execution history").first.click()
        for shard in SHARDS:  # one failed evaluation per stale partition, each saying what changed
            expect(page.get_by_text(f"{shard}: {WHY}")).to_be_visible(timeout=20_000)
        _shot(page, "shard_models_up_to_date_history", tmp_path)
        _open(page, f"{base}/assets/shard_models?view=partitions")
        page.get_by_text(SHARDS[1], exact=True).first.click()
        expect(page.get_by_text("Unsynced").first).to_be_visible(timeout=20_000)  # Dagster's own, in a partition's detail
        _shot(page, "shard_models_partition_unsynced", tmp_path)
        browser.close()
