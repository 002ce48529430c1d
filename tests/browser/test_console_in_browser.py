"""The console as a marketer uses it, in a real browser against the running stack: sign
in, create a trigger, preview it for a customer, watch a demo customer change stage and
the action appear, check and save the lifecycle model, replay a dead letter, export a
customer's data and erase them.

Each test also saves a screenshot of the page it ends on (docs/console.md shows them).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from browserkit import Console, run_async, send_events
from kit import produce
from playwright.sync_api import Page, expect

WAIT = 45_000  # ms: consumers join their groups, then events flow through three services


def sign_in(page: Page, key: str, then: str = "/") -> None:
    page.goto(f"/login?next={then}")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who")).not_to_be_empty()


def event(customer: str, kind: str, data: dict[str, Any], days_ago: float = 0) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"{kind}-{uuid.uuid4().hex[:12]}",
        "source": "shop/web",
        "type": kind,
        "subject": customer,
        "time": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(),
        "data": data,
    }


def wait_until_known(console: Console, customer: str) -> None:
    """The customer page looks a customer up once: open it when the stage engine knows them."""
    deadline = time.monotonic() + WAIT / 1000
    while time.monotonic() < deadline:
        known = httpx.get(
            f"{console.url}/api/stage-engine/v1/customers/{customer}",
            headers={"Authorization": f"Bearer {console.admin_key}"},
        )
        if known.status_code == 200:
            return
        time.sleep(0.5)


def test_a_wrong_key_is_refused_and_a_read_key_sees_but_cannot_change(
    page: Page, console_stack: Console
) -> None:
    page.goto("/triggers")
    expect(page).to_have_url(f"{console_stack.url}/login?next=%2Ftriggers")
    page.fill("#key", "clm_admin_not-a-key")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    page.screenshot(path=console_stack.screenshot_path("login"))

    sign_in(page, console_stack.read_key, "/triggers")
    expect(page.locator("#who")).to_contain_text("read-only")
    expect(page.locator("#readonly-note")).to_be_visible()
    expect(page.locator("#new-trigger")).to_be_hidden()

    page.goto("/model")
    expect(page.locator("#rules tbody tr").first).to_be_visible()
    expect(page.locator("#rules tbody textarea").first).to_be_disabled()
    expect(page.locator("#check")).to_be_hidden()


def test_an_admin_creates_a_trigger_previews_it_and_a_customer_moving_gets_the_action(
    page: Page, console_stack: Console
) -> None:
    customer = f"demo-{uuid.uuid4().hex[:8]}"
    sign_in(page, console_stack.admin_key, "/triggers/new")

    page.fill("#t-name", "Welcome new customers")
    page.select_option("#t-on-kind", "transition")
    page.select_option("#t-to-stage", "onboarding")
    page.select_option("#t-channel", "kafka")
    page.fill("#t-topic", "crm.welcome")
    page.fill(
        "#t-kafka-payload",
        '{"customer": {{ customer.id | tojson }}, "email": {{ customer.traits.email | tojson }}}',
    )
    # A condition on a fact that does not exist is refused, naming the condition.
    page.fill("#t-condition", "facts.visits > 3")
    page.click("#save")
    expect(page.locator("#form-errors")).to_contain_text("condition")
    expect(page.locator("#t-condition")).to_have_class("invalid")

    page.fill("#t-condition", "facts.email != null")
    page.click("#save")
    expect(page.locator("#save-status")).to_contain_text("Saved as version 1")
    expect(page).to_have_url(re.compile(r"/triggers/trg_[0-9a-f]+$"))
    expect(page.locator("#versions tbody tr")).to_have_count(1)

    # The customer signs up; once campaigns knows them, the preview renders for them.
    send_events(
        console_stack,
        event(customer, "web.signed_up", {"email": f"{customer}@example.com", "name": "Ana"}),
    )
    page.fill("#preview-customer", customer)
    deadline = time.monotonic() + WAIT / 1000
    while True:
        page.click("#preview-form button[type=submit]")
        expect(page.locator("#preview-status")).not_to_have_text("rendering…")
        if page.locator("#preview-result").is_visible() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(1000)
    expect(page.locator("#preview-matches")).to_contain_text("yes")
    expect(page.locator("#preview-payload")).to_contain_text(f"{customer}@example.com")
    page.screenshot(path=console_stack.screenshot_path("trigger"), full_page=True)

    # The first purchase moves them to onboarding: the trigger fires and sends.
    send_events(
        console_stack,
        event(customer, "purchase.completed", {"order_id": "1", "amount": "42", "currency": "EUR"}),
    )
    page.goto(f"/customers?id={customer}")
    expect(page.locator('[data-field="Stage"]')).to_have_text("Onboarding", timeout=WAIT)
    expect(page.locator('#timeline li[data-to="onboarding"]')).to_contain_text(
        "something the customer did"
    )
    expect(page.locator('#actions [data-status="delivered"]')).to_be_visible(timeout=WAIT)
    page.screenshot(path=console_stack.screenshot_path("customer"), full_page=True)

    # By email: found when the stage engine can search by email, else the page says so.
    page.fill("#q", f"{customer}@example.com")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-message, #c-title").filter(visible=True).first).to_contain_text(
        re.compile(f"{customer}|not available")
    )

    page.goto("/triggers")
    row = page.locator("#triggers tbody tr", has_text="Welcome new customers")
    row.get_by_role("button", name="Turn off").click()
    expect(row.locator("[data-enabled]")).to_have_text("off")
    row.get_by_role("button", name="Turn on").click()
    expect(row.locator("[data-enabled]")).to_have_text("on")
    page.screenshot(path=console_stack.screenshot_path("triggers"), full_page=True)

    page.goto("/results")
    page.get_by_role("link", name="Welcome new customers").first.click()
    expect(page.locator('[data-kpi="delivered"] .kpi-value')).to_have_text("1", timeout=WAIT)
    page.screenshot(path=console_stack.screenshot_path("results"), full_page=True)


def test_the_overview_shows_stages_movements_and_kpis_live(
    page: Page, console_stack: Console
) -> None:
    sign_in(page, console_stack.read_key, "/")
    customers = page.locator('[data-kpi="customers"] .kpi-value')
    expect(customers).not_to_be_empty()
    before = int(customers.inner_text().replace(",", ""))
    # A small demo population arrives while the page is open: it refreshes by itself.
    run = uuid.uuid4().hex[:6]
    money = {"currency": "EUR", "amount": "30"}
    events = []
    for n in range(3):
        events.append(event(f"p{n}-{run}", "web.signed_up", {"email": f"p{n}-{run}@example.com"}))
    for n in range(2):
        events.append(event(f"o{n}-{run}", "purchase.completed", {"order_id": "1", **money}))
    events.append(event(f"r-{run}", "purchase.completed", {"order_id": "1", **money}, 3))
    events.append(event(f"r-{run}", "billing.payment_failed", {"invoice_id": "9", **money}))
    for n, days in enumerate((120, 80, 45, 5)):
        events.append(event(f"a-{run}", "purchase.completed", {"order_id": str(n), **money}, days))
    events.append(event(f"a-{run}", "support.nps_submitted", {"score": 10}, 1))
    events.append(event(f"d-{run}", "purchase.completed", {"order_id": "1", **money}, 2))
    events.append(event(f"d-{run}", "support.nps_submitted", {"score": 3}))
    send_events(console_stack, *events)

    expect(customers).to_have_text(str(before + 8), timeout=WAIT)
    expect(page.locator('[data-kpi="nps"] .kpi-label')).to_have_text("NPS")
    expect(page.locator('[data-kpi="nps"] .kpi-hint')).not_to_contain_text("from 0 answers")
    expect(page.locator("#flows-chart .sankey")).to_be_attached()
    page.wait_for_timeout(1000)  # let the charts finish their transitions
    page.screenshot(path=console_stack.screenshot_path("overview"), full_page=True)


def test_an_admin_checks_a_lifecycle_model_change_before_saving_it(
    page: Page, console_stack: Console
) -> None:
    sign_in(page, console_stack.admin_key, "/model")
    first_rule = page.locator("#rules tbody tr").first.locator('[name="when"]')
    expect(first_rule).not_to_have_value("")
    original = first_rule.input_value()

    first_rule.fill("visits > 3")
    page.click("#check")
    if page.locator("#save-model").is_enabled():  # no dry run on this server: save refuses
        page.click("#save-model")
    expect(page.locator("#model-errors")).to_contain_text("rules[0].when")
    expect(first_rule).to_have_class("invalid")

    first_rule.fill(original)
    page.click("#check")
    expect(page.locator("#save-model")).to_be_enabled()
    page.screenshot(path=console_stack.screenshot_path("model"), full_page=True)
    # Scoring's served model already made a version of its own: the next one is new.
    current = httpx.get(
        f"{console_stack.url}/api/stage-engine/v1/lifecycle-model",
        headers={"Authorization": f"Bearer {console_stack.read_key}"},
    ).json()["version"]
    page.click("#save-model")
    expect(page.locator("#model-status")).to_contain_text(f"Saved as version {current + 1}")
    # Every version is listed, the new one included.
    expect(page.locator("#model-versions tbody tr")).to_have_count(current + 1)


def test_an_admin_replays_a_dead_letter_after_fixing_it(page: Page, console_stack: Console) -> None:
    # A purchase without its currency, sent straight to Kafka: ingest dead-letters it.
    customer = f"dl-{uuid.uuid4().hex[:8]}"
    broken = event(customer, "purchase.completed", {"order_id": "7", "amount": "19.90"})
    run_async(produce(console_stack.bootstrap_servers, "clm.events.inbound", [broken]))

    sign_in(page, console_stack.admin_key, "/dead-letters")
    listed = httpx.get(
        f"{console_stack.url}/api/ingest/v1/deadletters",
        headers={"Authorization": f"Bearer {console_stack.admin_key}"},
    )
    if listed.status_code == 404 and listed.json().get("detail") == "Not Found":
        page.screenshot(path=console_stack.screenshot_path("dead-letters"), full_page=True)
        pytest.skip("ingest has no dead-letter endpoints yet (GET /v1/deadletters)")

    row = page.locator("#deadletters tbody tr", has_text=broken["id"])
    deadline = time.monotonic() + WAIT / 1000
    while not row.count() and time.monotonic() < deadline:
        page.click("#dl-refresh")
        page.wait_for_timeout(1000)
    expect(row).to_contain_text("currency")
    fixed = {**broken, "data": {**broken["data"], "currency": "EUR"}}
    row.locator("textarea").fill(json.dumps(fixed))
    page.screenshot(path=console_stack.screenshot_path("dead-letters"), full_page=True)
    row.locator("button[data-replay]").click()
    expect(page.locator("#dl-status")).to_contain_text("Sent again")

    # The fixed purchase now reaches the stage engine (through the inbound gate and the
    # purchase topic); the page shows a customer once the stage engine knows them.
    wait_until_known(console_stack, customer)
    page.goto(f"/customers?id={customer}")
    expect(page.locator('[data-field="Purchases"]')).to_have_text("1", timeout=WAIT)


def test_an_admin_exports_a_customers_data_then_erases_them_everywhere(
    page: Page, console_stack: Console
) -> None:
    customer = f"gdpr-{uuid.uuid4().hex[:8]}"
    email = f"{customer}@example.com"
    send_events(
        console_stack,
        event(customer, "web.signed_up", {"email": email, "name": "Rosa Privata"}),
        event(customer, "purchase.completed", {"order_id": "1", "amount": "42", "currency": "EUR"}),
    )
    # A read key sees the customer but neither privacy control.
    wait_until_known(console_stack, customer)
    sign_in(page, console_stack.read_key, "/customers")
    page.goto(f"/customers?id={customer}")
    expect(page.locator('[data-field="Stage"]')).to_have_text("Onboarding", timeout=WAIT)
    expect(page.locator("#export")).to_be_hidden()
    expect(page.locator("#erase")).to_be_hidden()

    sign_in(page, console_stack.admin_key, "/customers")
    page.goto(f"/customers?id={customer}")
    expect(page.locator('[data-field="Email"]')).to_have_text(email, timeout=WAIT)

    with page.expect_download() as downloaded:
        page.click("#export")
        expect(page.locator("#privacy-status")).to_contain_text("Exported")  # or says why not
    assert downloaded.value.suggested_filename == f"clm-export-{customer}.json"
    document = json.loads(Path(downloaded.value.path()).read_text())
    assert document["customer_id"] == customer
    assert email in json.dumps(document)

    # The dialog names the customer and says what happens; the id must be typed first.
    page.click("#erase")
    dialog = page.locator("#erase-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#erase-who")).to_have_text(f"{customer} (Rosa Privata, {email})")
    expect(dialog).to_contain_text("erased in every service")
    expect(dialog).to_contain_text("cannot be undone")
    confirm = page.locator("#erase-confirm")
    expect(confirm).to_be_disabled()
    page.fill("#erase-typed", customer[:-1])
    expect(confirm).to_be_disabled()
    page.fill("#erase-typed", customer)
    expect(confirm).to_be_enabled()
    page.screenshot(path=console_stack.screenshot_path("erase"))
    confirm.click()

    expect(dialog).to_be_hidden()
    services = page.locator("#erasure-services tbody tr")
    expect(services).to_have_count(4)
    expect(page.locator("#erasure-status")).to_have_attribute(
        "data-status", "completed", timeout=WAIT
    )
    expect(page.locator('#erasure-services [data-done="true"]')).to_have_count(4)
    expect(page.locator("#erasure-status")).to_contain_text("CLM holds nothing more")
    expect(page.locator("#customer")).to_be_hidden()
    page.screenshot(path=console_stack.screenshot_path("erased"), full_page=True)

    # Gone: found neither by id nor by email.
    page.fill("#q", customer)
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-message")).to_have_text(f"No customer with id “{customer}”.")
    page.fill("#q", email)
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-message")).to_have_text(f"No customer with email “{email}”.")
