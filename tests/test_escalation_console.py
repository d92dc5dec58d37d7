"""The operator web console: its JSON API over HTTP, and end to end in a real headless Chromium.

The browser tests use Debian's chromium (``bash .ci/browser-setup.sh`` installs it and Playwright's
Python package; no browser is ever downloaded). Locally they skip when chromium is absent; in CI
(``CI`` set) a missing browser is a failure, so they cannot silently stop running there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from interlock import GuardClient
from interlock.client.operator import OperatorClient
from interlock.server.background import background_server
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from tests.support.escalation import (
    AGENT,
    AGENT_TOKEN,
    OPERATOR_TOKEN,
    RISKY,
    AgentCall,
    example_data,
    loaded_from,
    png_base64,
    wait_for,
)

CHROMIUM = os.environ.get("INTERLOCK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(autouse=True)
def tokens(monkeypatch):
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.setenv("INTERLOCK_AGENT_TOKEN", AGENT_TOKEN)


def console_config(tmp_path, **escalation):
    data = example_data(tmp_path, **escalation)
    data["server"]["console_port"] = 0
    data["auth"]["agent_tokens"] = {"env": "INTERLOCK_AGENT_TOKEN"}
    return loaded_from(data)


def http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict, dict | str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            status, hdrs, raw = res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    text = raw.decode()
    return (
        status,
        hdrs,
        json.loads(text) if hdrs.get("Content-Type", "").startswith("application/json") else text,
    )


def test_console_api_requires_an_operator_token(tmp_path):
    with background_server(console_config(tmp_path, mode="deferred", timeout_seconds=60)) as srv:
        base = f"http://127.0.0.1:{srv.console_port}"
        status, headers, page = http(base + "/")
        assert status == 200 and "<title>Interlock" in page
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"

        status, _, body = http(base + "/api/escalations")
        assert status == 401 and "Bearer TOKEN" in body["error"]
        assert http(base + "/api/escalations", "z" * 30)[0] == 401
        status, _, body = http(base + "/api/escalations", AGENT_TOKEN)
        assert status == 403 and "agent" in body["error"]
        assert http(base + "/api/events", AGENT_TOKEN)[0] == 403

        with GuardClient(f"127.0.0.1:{srv.port}", agent_id=AGENT) as agent:  # agent token from the env
            eid = agent.check(RISKY, np.int64(1)).escalation_id
        url = f"{base}/api/escalations/{eid}/resolve"
        assert http(url, AGENT_TOKEN, {"resolution": "approve"})[0] == 403, "an agent cannot approve"
        assert http(url, OPERATOR_TOKEN, {"resolution": "maybe"})[0] == 400
        assert http(url, OPERATOR_TOKEN, {"resolution": "substitute", "action": 9})[0] == 400
        assert (
            http(f"{base}/api/escalations/esc-nope/resolve", OPERATOR_TOKEN, {"resolution": "approve"})[0]
            == 404
        )

        status, _, body = http(base + "/api/escalations", OPERATOR_TOKEN)
        assert status == 200 and [e["id"] for e in body["escalations"]] == [eid]
        esc = body["escalations"][0]
        assert esc["observation"] == {"shape": [2], "dtype": "float32", "values": pytest.approx([0.9, 0.1])}
        assert esc["action_space"] == {"type": "discrete", "n": 2} and esc["state"] == "pending"

        status, _, done = http(
            url, OPERATOR_TOKEN, {"resolution": "reject", "operator": "ivy", "comment": "no"}
        )
        assert status == 200 and done["state"] == "rejected" and done["operator"] == "ivy"
        status, _, body = http(url, OPERATOR_TOKEN, {"resolution": "approve"})
        assert status == 409 and "already rejected by ivy" in body["error"]


@pytest.fixture(scope="module")
def browser():
    reason = None
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = f"chromium is not installed at {CHROMIUM}; run: bash .ci/browser-setup.sh"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = reason or "the playwright Python package is missing; run: bash .ci/browser-setup.sh"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the browser tests)")
        pytest.skip(reason)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _countdown(card) -> float:
    text = card.query_selector(".countdown").inner_text()
    match = re.match(r"([\d.]+) s", text)
    assert match, text
    return float(match.group(1))


def test_console_answers_blocking_checks_live_in_chromium(tmp_path, browser):
    with background_server(console_config(tmp_path, timeout_seconds=25)) as srv:
        target = f"127.0.0.1:{srv.port}"
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        navigations: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)
        page.goto(f"http://127.0.0.1:{srv.console_port}/")

        # Sign in: a wrong token and an agent's token are refused, an operator token works.
        for bad, words in [("q" * 24, "not valid"), (AGENT_TOKEN, "belongs to an agent")]:
            page.fill("#token", bad)
            page.click("#login button[type=submit]")
            page.wait_for_function(
                "w => document.querySelector('#login-error').textContent.includes(w)", arg=words
            )
        page.fill("#token", OPERATOR_TOKEN)
        page.fill("#operator-name", "grace")
        page.click("#login button[type=submit]")
        page.wait_for_selector("#live.on")

        # 1. Approve: the escalation appears live, with its context, and the agent gets ALLOW.
        call = AgentCall(
            target, episode_id="ep-web", step=5, labels={"frame_png_base64": png_base64(), "site": "b3"}
        )
        card = page.wait_for_selector(".card[data-escalation-id]")
        eid = card.get_attribute("data-escalation-id")
        with OperatorClient(target) as ops:
            assert [e.escalation_id for e in ops.list(pb.ESCALATION_STATE_PENDING)] == [eid]
        assert card.query_selector(".agent").inner_text() == AGENT
        assert card.query_selector(".rule").inner_text() == "high_stakes"
        assert card.query_selector(".episode").inner_text() == "ep-web"
        cells = [[td.inner_text() for td in tr.query_selector_all("td")]
                 for tr in card.query_selector_all(".observation tbody tr")]  # fmt: skip
        assert cells == [["0", "0.9"], ["1", "0.1"]]
        signals = [
            tr.query_selector("td").inner_text() for tr in card.query_selector_all(".signals tbody tr")
        ]
        assert signals == ["action_space.invalid", "action_space.distance"]
        assert card.query_selector(".proposed").inner_text() == "1"
        assert "0" in card.query_selector(".fallback").inner_text()
        assert "site=b3" in card.query_selector(".labels").inner_text()
        frame = card.query_selector(".frame img")
        page.wait_for_function("img => img.complete && img.naturalWidth === 32", arg=frame)
        assert card.query_selector(".frame").is_visible()
        first = _countdown(card)
        assert 15 < first <= 25
        time.sleep(0.6)
        assert _countdown(card) < first, "the countdown must tick"
        card.query_selector(".comment").fill("looks fine")
        card.query_selector(".approve").click()
        r = call.wait()
        assert r.verdict is Verdict.ALLOW and r.action == 1 and r.escalation_id == eid
        assert any("grace approved" in x and "looks fine" in x for x in r.reasons)
        page.wait_for_selector(f".card[data-escalation-id='{eid}']", state="detached")
        page.wait_for_selector(f"#history tr[data-escalation-id='{eid}']", state="attached")
        assert page.inner_text("#pending-count") == "0"

        # 2. Reject.
        call = AgentCall(target)
        card = page.wait_for_selector(".card[data-escalation-id]")
        rejected = card.get_attribute("data-escalation-id")
        card.query_selector(".reject").click()
        r = call.wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 0 and r.fallback == "safe"
        page.wait_for_selector(f".card[data-escalation-id='{rejected}']", state="detached")

        # 3. Substitute with an action chosen from the agent's action space.
        call = AgentCall(target, action=0)
        card = page.wait_for_selector(".card[data-escalation-id]")
        assert card.query_selector_all(".substitute-action option")[1].inner_text() == "action 1"
        card.query_selector(".substitute-action").select_option("1")
        substituted = card.get_attribute("data-escalation-id")
        card.query_selector(".substitute").click()
        r = call.wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 1 and r.fallback == "operator"
        page.wait_for_selector(f".card[data-escalation-id='{substituted}']", state="detached")

        # 4. Answered elsewhere (the API): the card leaves this page live too.
        call = AgentCall(target)
        card = page.wait_for_selector(".card[data-escalation-id]")
        other = card.get_attribute("data-escalation-id")
        with OperatorClient(target) as ops:
            ops.approve(other, operator="henry")
        call.wait()
        page.wait_for_selector(f".card[data-escalation-id='{other}']", state="detached")

        page.click(".tab[data-tab=history]")
        rows = wait_for(lambda: page.query_selector_all("#history tbody tr") if
                        len(page.query_selector_all("#history tbody tr")) == 4 else None)  # fmt: skip
        outcomes = [row.query_selector(".outcome").inner_text() for row in rows]
        assert outcomes == ["approved", "substituted", "rejected", "approved"]
        assert "henry" in rows[0].inner_text() and "grace" in rows[3].inner_text()
        page.screenshot(path=str(tmp_path / "console-history.png"))
        assert errors == [], errors
        assert len(navigations) == 1, f"the page must update without reloading: {navigations}"
        page.close()


def test_console_unanswered_escalation_expires_into_history(tmp_path, browser):
    with background_server(console_config(tmp_path)) as srv:  # the example's 2-second deadline
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{srv.console_port}/")
        page.fill("#token", OPERATOR_TOKEN)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#live.on")
        call = AgentCall(f"127.0.0.1:{srv.port}")
        card = page.wait_for_selector(".card[data-escalation-id]")
        eid = card.get_attribute("data-escalation-id")
        r = call.wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 0
        page.wait_for_selector(f".card[data-escalation-id='{eid}']", state="detached")
        row = page.wait_for_selector(f"#history tr[data-escalation-id='{eid}']", state="attached")
        assert row.query_selector(".outcome").text_content() == "expired"
        assert "(deadline)" in row.text_content()
        page.close()
