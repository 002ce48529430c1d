"""Journeys in a real browser against the running stack: an admin edits a journey as JSON
and is told, while typing, what is wrong and how many customers would enter now; saved,
it takes a cohort of new buyers through a welcome and an A/B split, and its page shows
the funnel per step and the arms side by side.

Each test saves a screenshot of the page it ends on (docs/journeys.md shows them).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from browserkit import Console, call, send_events
from playwright.sync_api import Page, expect

COHORT = 12


def event(customer: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"{kind}-{uuid.uuid4().hex[:12]}",
        "source": "shop/web",
        "type": kind,
        "subject": customer,
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }


def sign_in(page: Page, key: str, then: str) -> None:
    page.goto(f"/login?next={then}")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who")).not_to_be_empty()


def count(console: Console, condition: str) -> int:
    answer = call(
        console,
        "POST",
        "/campaigns/v1/segments/estimate",
        console.admin_key,
        {"condition": condition},
    )
    return int(answer["count"])


def wait_for(what: str, done: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.5)


def journey(run: str) -> dict[str, Any]:
    return {
        "name": f"Welcome and test two tips ({run})",
        "entry": {
            "on": {"kind": "transition", "to_stage": "onboarding"},
            "condition": f'traits.cohort == "{run}"',
        },
        "steps": [
            {"id": "welcome", "type": "send", "action": {"channel": "kafka",
             "topic": "clm.test.actions", "payload": '{"customer": "{{ customer.id }}"}'}},
            {"id": "tips", "type": "split", "arms": [
                {"name": "short", "percent": 50, "next": "short"},
                {"name": "long", "percent": 50, "next": "long"}]},
            {"id": "short", "type": "exit"},
            {"id": "long", "type": "exit"},
        ],
    }  # fmt: skip


@pytest.mark.timeout(300)
def test_an_admin_edits_a_journey_and_sees_its_funnel_and_arms(
    page: Page, console_stack: Console
) -> None:
    run = uuid.uuid4().hex[:6]
    customers = [f"j{n:02d}-{run}" for n in range(COHORT)]
    sign_in(page, console_stack.admin_key, "/journeys/new")
    box = page.locator("#j-definition")
    expect(page.locator("#j-check")).to_have_attribute("data-valid", "true")  # the example

    # A backward jump is refused while typing, naming the step and the field.
    wrong = journey(run)
    wrong["steps"][1]["arms"][0]["next"] = "welcome"
    box.fill(json.dumps(wrong, indent=2))
    expect(page.locator("#j-check")).to_have_attribute("data-valid", "false")
    expect(page.locator("#j-problems")).to_contain_text(
        "steps[1].arms[0].next: 'welcome' is not after"
    )
    page.screenshot(path=console_stack.screenshot_path("journey-editor"), full_page=True)

    # Valid again: the dry run counts who would enter now (nobody of this cohort yet).
    box.fill(json.dumps(journey(run), indent=2))
    expect(page.locator("#j-check")).to_have_attribute("data-valid", "true")
    expect(page.locator("#j-dry-run")).to_have_attribute("data-count", "0")
    page.click("#save")
    expect(page).to_have_url(re.compile(r"/journeys/jrn_[0-9a-f]+\?saved=1$"))
    expect(page.locator("#save-status")).to_contain_text("Saved as version 1")

    # The cohort signs up (campaigns learns their traits), then buys: onboarding.
    signups = [
        event(c, "web.signed_up", {"email": f"{c}@example.com", "traits": {"cohort": run}})
        for c in customers
    ]
    send_events(console_stack, *signups)
    mine = f'traits.cohort == "{run}"'
    wait_for("campaigns knows the cohort", lambda: count(console_stack, mine) == COHORT)
    order = {"amount": "20.00", "currency": "EUR"}
    purchases = [event(c, "purchase.completed", {"order_id": f"o-{c}", **order}) for c in customers]
    send_events(console_stack, *purchases)
    page.reload()
    through = page.locator('#funnel [data-step="welcome"]')
    expect(through).to_have_attribute("data-through", str(COHORT), timeout=90_000)
    expect(page.locator('#funnel [data-step="tips"]')).to_have_attribute(
        "data-through", str(COHORT)
    )
    expect(page.locator("#j-summary [data-entered]")).to_have_attribute("data-entered", str(COHORT))
    arms = page.locator("#arms [data-arm]")
    expect(arms).to_have_text(["long", "short"])
    journey_id = page.url.split("/journeys/")[1].split("?")[0]
    stats = call(
        console_stack, "GET", f"/campaigns/v1/journeys/{journey_id}/stats", console_stack.read_key
    )
    assert sum(a["runs"] for a in stats["splits"]["tips"]) == COHORT
    page.screenshot(path=console_stack.screenshot_path("journey"), full_page=True)

    # The list shows it with its entries.
    page.goto("/journeys")
    row = page.locator(f'#journeys [data-journey="{journey_id}"]')
    expect(row).to_be_visible()
    expect(
        page.locator("#journeys [data-entered]").filter(has_text=str(COHORT)).first
    ).to_be_visible()
