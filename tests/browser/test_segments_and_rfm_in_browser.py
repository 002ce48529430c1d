"""Segments and RFM in a real browser against the running stack: a population of
customers arrives (some buy, some only sign up; scoring computes RFM cut points over
them), an admin drafts a segment and sees how many customers it matches while typing, is
told which field is wrong, saves it and pages through, filters and exports its members;
the RFM page shows scoring's grid, its cut points and the moves between segments.

Each test also saves a screenshot of the page it ends on (docs/console.md shows them).
"""

from __future__ import annotations

import csv
import io
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from browserkit import Console, call, send_events
from playwright.sync_api import Page, expect

WAIT = 90.0  # s: a few hundred events through three services, then a refit and a rescore
FIRST = ["Ana", "Ben", "Chloé", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Silva", "Meyer", "Dubois", "Rossi", "Novak", "Kaya", "Berg", "Laine", "Costa", "Wolf"]


@dataclass
class Population:
    run: str
    customers: list[str] = field(default_factory=list)
    gold: set[str] = field(default_factory=set)  # traits.plan == "gold"
    buyers: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gold_condition(self) -> str:
        return f'traits.cohort == "{self.run}" && traits.plan == "gold"'


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


def sign_in(page: Page, key: str, then: str = "/") -> None:
    page.goto(f"/login?next={then}")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who")).not_to_be_empty()


def shop_of(run: str, size: int = 160) -> Population:
    """A shop's customers over the last year: a third on the gold plan, a fifth who only
    signed up, the rest buying from once to a dozen times, recently or long ago."""
    rng = random.Random(1204)
    shop = Population(run)
    for n in range(size):
        customer = f"c{n:03d}-{run}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        plan = "gold" if n % 3 == 0 else "basic"
        shop.customers.append(customer)
        if plan == "gold":
            shop.gold.add(customer)
        purchases = rng.choices([0, 1, 2, 3, 4, 6, 9, 12], weights=[20, 28, 16, 12, 9, 7, 5, 3])[0]
        last_day = rng.choice([rng.uniform(0.5, 30), rng.uniform(30, 120), rng.uniform(120, 330)])
        days = sorted(last_day + rng.uniform(0, 330 - last_day) for _ in range(purchases - 1))
        days = [*days, last_day] if purchases else []
        signed_up = (max(days) if days else rng.uniform(0, 20)) + rng.uniform(0.1, 10)
        shop.events.append(
            event(
                customer,
                "web.signed_up",
                {
                    "email": f"{first.lower()}.{last.lower()}.{n}@{run}.example.com",
                    "name": f"{first} {last}",
                    "traits": {"cohort": run, "plan": plan},
                },
                signed_up,
            )
        )
        for i, day in enumerate(sorted(days, reverse=True)):
            amount = Decimal(rng.randrange(1500, 24000)) / 100
            shop.events.append(
                event(
                    customer,
                    "purchase.completed",
                    {"order_id": f"{customer}-{i}", "amount": str(amount), "currency": "EUR"},
                    day,
                )
            )
        if purchases:
            shop.buyers.add(customer)
    return shop


def estimate(console: Console, condition: str) -> int:
    answer = call(
        console,
        "POST",
        "/campaigns/v1/segments/estimate",
        console.admin_key,
        {"condition": condition},
    )
    return int(answer["count"])


def wait_for(what: str, done: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def shop(console_stack: Console) -> Population:
    """The population, through ingest; then a refit (which computes RFM cut points and
    rescores everyone) once scoring has them all, and until campaigns has their RFM."""
    shop = shop_of(uuid.uuid4().hex[:6])
    for start in range(0, len(shop.events), 200):
        send_events(console_stack, *shop.events[start : start + 200])
    mine = f'traits.cohort == "{shop.run}"'
    wait_for(
        "campaigns knows every customer",
        lambda: estimate(console_stack, mine) == len(shop.customers),
    )
    wait_for(
        "every buyer has a stage past prospect",
        lambda: estimate(console_stack, f'{mine} && stage != "prospect"') == len(shop.buyers),
    )
    unscored = set(shop.buyers)

    def scored() -> bool:
        for customer in list(unscored):
            answer = call_status(console_stack, f"/scoring/v1/customers/{customer}/score")
            if answer == 200:
                unscored.discard(customer)
        return not unscored

    wait_for("scoring scored every buyer", scored)
    call(console_stack, "POST", "/scoring/v1/model/refit", console_stack.admin_key, timeout=60)
    wait_for(
        "campaigns has every buyer's RFM segment",
        lambda: estimate(console_stack, f"{mine} && scores.rfm_recency >= 1") == len(shop.buyers),
    )
    return shop


def call_status(console: Console, path: str) -> int:
    answer = httpx.get(
        f"{console.url}/api{path}", headers={"Authorization": f"Bearer {console.read_key}"}
    )
    return answer.status_code


@pytest.mark.timeout(300)
def test_an_admin_drafts_a_segment_with_a_live_estimate_saves_it_and_exports_its_members(
    page: Page, console_stack: Console, shop: Population
) -> None:
    sign_in(page, console_stack.admin_key, "/segments/new")
    estimate_line = page.locator("#estimate")
    condition = page.locator("#s-condition")

    # While typing: the count of customers the condition matches, here the gold plan's.
    condition.fill(shop.gold_condition)
    expect(estimate_line).to_have_attribute("data-count", str(len(shop.gold)))
    expect(estimate_line).to_have_text(f"{len(shop.gold)} customers match this condition now.")

    # A condition that does not compile, or compares a count with a string, names the field.
    condition.fill("facts.visits > 3")
    expect(estimate_line).to_contain_text("condition: ")
    expect(estimate_line).to_contain_text("visits")
    expect(condition).to_have_class("invalid")
    expect(estimate_line).not_to_have_attribute("data-count", str(len(shop.gold)))
    condition.fill('facts.purchases_total > "3"')
    expect(estimate_line).to_contain_text("condition: ")
    expect(condition).to_have_class("invalid")

    # Saving without a name: the server refuses and the page says which field.
    condition.fill(shop.gold_condition)
    expect(estimate_line).to_have_attribute("data-count", str(len(shop.gold)))
    expect(condition).not_to_have_class("invalid")
    page.click("#save")
    expect(page.locator("#form-errors")).to_contain_text("name: ")
    expect(page.locator("#s-name")).to_have_class("invalid")

    name = "Gold plan customers"
    page.fill("#s-name", name)
    page.fill("#s-description", "Customers on the gold plan, for the loyalty newsletter")
    page.click("#save")
    expect(page.locator("#save-status")).to_contain_text("Saved as version 1")
    expect(page).to_have_url(re.compile(r"/segments/seg_[0-9a-f]+$"))
    segment_id = page.url.rsplit("/", 1)[1]

    # The members once recomputed: the gold customers, by id, 25 a page.
    expect(page.locator("#s-summary [data-recompute]")).to_have_attribute(
        "data-recompute", "done", timeout=WAIT * 1000
    )
    members = page.locator("#members [data-member]")
    gold = sorted(shop.gold)
    for start in (0, 25, 50):
        expect(members).to_have_text(gold[start : start + 25])
        if start + 25 < len(gold):
            page.click("#members-next")
    expect(page.locator("#members-next")).to_be_disabled()
    page.click("#members-first")
    expect(members).to_have_text(gold[:25])

    # Filters: only those who never bought are still prospects.
    page.select_option("#f-stage", "prospect")
    prospects = sorted(shop.gold - shop.buyers)
    expect(members).to_have_text(prospects)
    expect(page.locator("#members [data-stage]")).to_have_text(["Prospect"] * len(prospects))
    with page.expect_download() as downloaded:
        page.click("#export")
    assert downloaded.value.suggested_filename == f"{segment_id}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(downloaded.value.path()).read_text())))
    assert [r["customer_id"] for r in rows] == prospects
    assert {r["stage"] for r in rows} == {"prospect"}

    # By RFM segment: the members the unfiltered list puts in the most common one.
    page.select_option("#f-stage", "")
    listed = call(
        console_stack,
        "GET",
        f"/campaigns/v1/segments/{segment_id}/members?limit=1000",
        console_stack.read_key,
    )["members"]
    assert sorted(m["customer_id"] for m in listed) == gold
    common = Counter(m["rfm_segment"] for m in listed if m["rfm_segment"]).most_common(1)[0][0]
    page.select_option("#f-rfm", common)
    expect(members).to_have_text(
        sorted(m["customer_id"] for m in listed if m["rfm_segment"] == common)[:25]
    )
    expect(page.locator("#members [data-rfm]").first).to_have_text(common)
    page.select_option("#f-rfm", "")
    expect(members).to_have_text(gold[:25])
    page.wait_for_timeout(500)
    page.screenshot(path=console_stack.screenshot_path("segments"), full_page=True)

    # A new version: only those still prospects; the members are recomputed to them.
    condition.fill(f'{shop.gold_condition} && stage == "prospect"')
    expect(estimate_line).to_have_attribute("data-count", str(len(prospects)))
    page.click("#save")
    expect(page.locator("#save-status")).to_contain_text("Saved as version 2")
    expect(page.locator("#s-summary [data-size]")).to_have_text(str(len(prospects)))
    expect(members).to_have_text(prospects)
    expect(page.locator("#versions tbody tr")).to_have_count(2)

    # A read key sees the segment and its members, but cannot change it.
    sign_in(page, console_stack.read_key, f"/segments/{segment_id}")
    expect(page.locator("#s-name")).to_have_value(name)
    expect(page.locator("#s-condition")).to_be_disabled()
    expect(page.locator("#save")).to_be_hidden()
    expect(page.locator("#delete")).to_be_hidden()
    expect(members).to_have_text(prospects)

    # The list shows it with its size; deleting it takes it off the list.
    sign_in(page, console_stack.admin_key, "/segments")
    row = page.locator("#segments tbody tr", has_text=name)
    expect(row.locator("[data-size]")).to_have_text(str(len(prospects)))
    row.get_by_role("link", name=name).click()
    expect(page.locator("#s-name")).to_have_value(name)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    expect(page).to_have_url(re.compile(r"/segments\?deleted="))
    expect(page.locator("#segments-status")).to_contain_text(f"Deleted the segment “{name}”")
    expect(page.locator("#segments tbody tr", has_text=name)).to_have_count(0)


def stable_grid(console: Console) -> dict[str, Any]:
    """Scoring's grid once two reads a second apart agree (nothing is rescoring)."""
    before = call(console, "GET", "/scoring/v1/rfm", console.read_key)
    deadline = time.monotonic() + WAIT
    while True:
        time.sleep(1)
        now = call(console, "GET", "/scoring/v1/rfm", console.read_key)
        if now == before or time.monotonic() > deadline:
            return now
        before = now


@pytest.mark.timeout(300)
def test_the_rfm_page_shows_scorings_grid_its_cut_points_and_the_moves(
    page: Page, console_stack: Console, shop: Population
) -> None:
    grid = stable_grid(console_stack)
    assert grid["customers"] >= len(shop.buyers)
    sign_in(page, console_stack.read_key, "/rfm")
    cell = "#heatmap td[data-recency='{recency}'][data-frequency='{frequency}']"

    # Every cell: its segment and its customers, as scoring counts them, R 5 on top.
    for c in grid["cells"]:
        here = page.locator(cell.format(**c))
        expect(here.locator(".hm-segment")).to_have_text(c["segment"])
        expect(here.locator(".hm-value")).to_have_text(f"{c['customers']:,}")
    expect(page.locator("#heatmap tbody th")).to_have_text([f"R {r}" for r in (5, 4, 3, 2, 1)])
    expect(page.locator('[data-kpi="customers"] .kpi-value')).to_have_text(f"{grid['customers']:,}")

    # Revenue instead: the money per cell.
    page.select_option("#measure", "revenue")
    for c in grid["cells"]:
        expect(page.locator(cell.format(**c)).locator(".hm-value")).to_have_text(
            f"{Decimal(c['revenue']):,.2f}"
        )
    # The darkest cell is the one with the most revenue.
    top = max(grid["cells"], key=lambda c: Decimal(c["revenue"]))
    expect(page.locator(cell.format(**top))).to_have_class("dark")

    # A click on a cell lists the customers of its segment.
    biggest = max(grid["cells"], key=lambda c: c["customers"])
    page.locator(cell.format(**biggest)).click()
    expect(page.locator("#rfm-customers-title")).to_have_text(f"Customers in {biggest['segment']}")
    listed = call(
        console_stack,
        "GET",
        f"/campaigns/v1/customers?{urlencode({'rfm_segment': biggest['segment'], 'limit': 25})}",
        console_stack.read_key,
    )["customers"]
    assert listed
    expect(page.locator("#rfm-customers-list [data-customer]")).to_have_text(
        [c["customer_id"] for c in listed]
    )
    expect(page.locator("#rfm-customers-list [data-rfm]")).to_have_text(
        [biggest["segment"]] * len(listed)
    )

    cuts = call(console_stack, "GET", "/scoring/v1/rfm/cuts", console_stack.read_key)
    expect(page.locator("#cuts tbody tr")).to_have_count(5)
    expect(page.locator("#cuts-about")).to_contain_text(f"Version {cuts['version']}")

    # Moves over the last 30 days, largest first, as scoring counts them.
    now = datetime.now(UTC)
    window = urlencode({"from": (now - timedelta(days=30)).isoformat(), "to": now.isoformat()})
    moves = call(console_stack, "GET", f"/scoring/v1/rfm/moves?{window}", console_stack.read_key)[
        "moves"
    ]
    expected = sorted((m for m in moves if m["customers"]), key=lambda m: -m["customers"])
    assert expected, "the refit gave every buyer a first RFM segment in the window"
    shown = page.locator("#moves li")
    expect(shown).to_have_count(len(expected))
    counts = [int(n) for n in (shown.evaluate_all("els => els.map(e => e.dataset.customers)"))]
    assert counts == [m["customers"] for m in expected]
    first = expected[0]
    expect(shown.first).to_contain_text(f"{first['from'] or 'No segment yet'} → {first['to']}")
    page.select_option("#measure", "customers")
    page.wait_for_timeout(500)
    page.screenshot(path=console_stack.screenshot_path("rfm"), full_page=True)
