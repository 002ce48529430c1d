"""Customer facts (clm_events.facts.FACTS) as of a moment, folded from ordered inputs.

The accumulator is fed inputs in (time, source, id) order and answers "the facts now" at
any moment at or after the last input it saw, so a replay over a customer's timeline
costs O(log n) per evaluation instead of a refold.

Scores (churn probability, CLV, RFM) are facts like the others: evaluated as of the
moment, from the customer's purchases and the served score model (clm_events.scoremodel,
with its RFM cut points, clm_events.rfm), and only when a rule reads them (`score_fact`),
since a CLV is a dozen hypergeometric terms.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from decimal import Decimal
from typing import Any

from clm_events import rfm
from clm_events.scoremodel import ServedModel, Summary
from clm_stage_engine.domain import inputs as k
from clm_stage_engine.domain.inputs import US_PER_DAY, Input, from_us

PRIORITIES = ("none", "low", "normal", "high", "urgent")
WINDOWS_DAYS = (30, 90, 365)
_NO_TRAITS = dict.fromkeys(k.TRAITS)
_WINDOWS = tuple((days, f"purchases_{days}d", f"revenue_{days}d") for days in WINDOWS_DAYS)
# Inputs that start the inactivity clocks: only customers with one need timer ticks.
ANCHORS = frozenset({k.PURCHASE, k.INVOICE_PAID, k.SUBSCRIPTION_STARTED, k.SUBSCRIPTION_CANCELLED})
# The facts evaluated under the served score model (and its RFM cut points) rather than
# folded.
SCORE_FACTS = ("clv", "churn_probability", "clv_top_decile", *rfm.RFM_FACTS)
_NO_SCORES = dict.fromkeys(SCORE_FACTS)
# Distinct web.tracked names counted per customer: a producer sending a new name with
# every event (an id in the name) must not grow the stored fold without bound.
MAX_TRACKED_NAMES = 100
_TRACKED_WINDOWS = tuple((days, f"tracked_{days}d") for days in WINDOWS_DAYS)
_NO_TRACKED: dict[str, dict[str, int]] = {name: {} for _, name in _TRACKED_WINDOWS}
# Bumped whenever the stored fold changes shape: an older fold is rebuilt from the inputs.
FOLD_FORMAT = 3


class Accumulator:
    def __init__(self) -> None:
        self.purchase_at: list[int] = []
        self._revenue_prefix: list[float] = [0.0]
        self.refund_at: list[int] = []
        self._refund_prefix: list[float] = [0.0]
        self._subscriptions: dict[str, tuple[str, int]] = {}  # id -> (last kind, at)
        self._first_subscription_at: int | None = None
        self._invoices: dict[str, str] = {}  # id -> last kind
        self._tickets: dict[str, list[Any]] = {}  # id -> [priority | None, resolved]
        self._nps: int | None = None
        self._web_at: int | None = None
        self._tracked: dict[str, list[int]] = {}  # web.tracked name -> times, in order
        self._traits: dict[str, str] = {}
        self.anchored = False
        # purchase.completed orders, as scoring sees them: order -> [day or None (only a
        # refund seen), amount, refunded].
        self._orders: dict[str, list[Any]] = {}
        # Caches dropped by every add: _static_facts, the score summary, the last score.
        self._static: dict[str, Any] | None = None
        self._customer_since: int | None = None
        self._cancelled_at: int | None = None
        self._summary: _Summary | bool | None = False
        self._scored: tuple[Any, ...] = ()

    def to_json(self) -> list[Any]:
        """The fold as stored with the timeline, so an input after the clock is added to
        it instead of folding every stored input again. A list: it is written with every
        event. Sums are kept as summed (JSON round-trips floats exactly)."""
        return [
            FOLD_FORMAT,
            self.purchase_at,
            self._revenue_prefix,
            self.refund_at,
            self._refund_prefix,
            self._subscriptions,
            self._first_subscription_at,
            self._invoices,
            self._tickets,
            self._nps,
            self._web_at,
            self._traits,
            self.anchored,
            self._orders,
            self._tracked,
        ]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Accumulator | None:
        """The stored fold, or None when it has an older shape (rebuild it)."""
        if not raw or raw[0] != FOLD_FORMAT:
            return None
        acc = cls()
        (
            _,
            acc.purchase_at,
            acc._revenue_prefix,
            acc.refund_at,
            acc._refund_prefix,
            subscriptions,
            acc._first_subscription_at,
            acc._invoices,
            acc._tickets,
            acc._nps,
            acc._web_at,
            acc._traits,
            acc.anchored,
            acc._orders,
            acc._tracked,
        ) = raw
        acc._subscriptions = {sid: (kind, at) for sid, (kind, at) in subscriptions.items()}
        return acc

    def add(self, i: Input) -> None:
        self._static, self._summary, self._scored = None, False, ()
        kind, d = i.kind, i.data
        if kind == k.PURCHASE or kind == k.INVOICE_PAID:
            self.purchase_at.append(i.at)
            self._revenue_prefix.append(self._revenue_prefix[-1] + float(d.get("amount", 0.0)))
            if kind == k.INVOICE_PAID:
                self._invoices[str(d["invoice"])] = kind
            else:  # a repeated order keeps its latest values, as in scoring
                order = self._orders.setdefault(str(d.get("order", i.id)), [None, 0.0, 0.0])
                order[0], order[1] = i.at // US_PER_DAY, float(d.get("amount", 0.0))
        elif kind == k.REFUND:
            self.refund_at.append(i.at)
            self._refund_prefix.append(self._refund_prefix[-1] + float(d["amount"]))
            if "order" in d:  # inputs stored by earlier releases name no order
                self._orders.setdefault(str(d["order"]), [None, 0.0, 0.0])[2] += float(d["amount"])
        elif kind == k.PAYMENT_FAILED:
            self._invoices[str(d["invoice"])] = kind
        elif kind == k.SUBSCRIPTION_STARTED or kind == k.SUBSCRIPTION_CANCELLED:
            self._subscriptions[str(d["subscription"])] = (kind, i.at)
            if kind == k.SUBSCRIPTION_STARTED and self._first_subscription_at is None:
                self._first_subscription_at = i.at
        elif kind == k.TICKET_OPENED:
            self._tickets.setdefault(str(d["ticket"]), [None, False])[0] = d.get("priority")
        elif kind == k.TICKET_RESOLVED:
            self._tickets.setdefault(str(d["ticket"]), [None, False])[1] = True
        elif kind == k.NPS:
            self._nps = int(d["score"])
        elif kind == k.TRACKED:
            name = str(d["name"])
            times = self._tracked.get(name)
            if times is not None:
                times.append(i.at)
            elif len(self._tracked) < MAX_TRACKED_NAMES:
                self._tracked[name] = [i.at]
        if kind.startswith("web."):
            self._web_at = i.at if self._web_at is None else max(self._web_at, i.at)
            self._traits.update(d.get("traits") or {})
        if kind in ANCHORS:
            self.anchored = True

    def purchases_after(self, moment: int | None) -> int:
        """Purchases after `moment` (all of them when None: no stage entered yet)."""
        if moment is None:
            return len(self.purchase_at)
        return len(self.purchase_at) - bisect_right(self.purchase_at, moment)

    def facts(self, now: int) -> dict[str, Any]:
        """Facts as of `now` (>= every input added). Timestamps are datetimes here; see
        to_json for the published form."""
        if self._static is None:
            self._static = self._static_facts()
        f = dict(self._static)
        purchases = self.purchase_at
        n = len(purchases)
        revenue, refunds = self._revenue_prefix, self._refund_prefix
        for days, count_name, revenue_name in _WINDOWS:
            cut = now - days * US_PER_DAY
            p = bisect_right(purchases, cut)
            r = bisect_right(self.refund_at, cut)
            f[count_name] = n - p
            f[revenue_name] = (revenue[-1] - revenue[p]) - (refunds[-1] - refunds[r])
        f["days_since_last_purchase"] = (now - purchases[-1]) / US_PER_DAY if n else None
        start = self._customer_since
        f["days_as_customer"] = (now - start) / US_PER_DAY if start is not None else None
        cancelled = self._cancelled_at
        f["days_since_subscription_cancelled"] = (
            (now - cancelled) / US_PER_DAY if cancelled is not None else None
        )
        if self._tracked:  # a name with no event in the window is absent, as in "ever"
            for days, name in _TRACKED_WINDOWS:
                cut = now - days * US_PER_DAY
                counts = {n: len(ts) - bisect_right(ts, cut) for n, ts in self._tracked.items()}
                f[name] = {n: c for n, c in counts.items() if c}
        return f

    def _static_facts(self) -> dict[str, Any]:
        """The facts that only change when an input is added, not as time passes: an
        evaluation between inputs (a timer tick) reuses them."""
        purchases = self.purchase_at
        n = len(purchases)
        f: dict[str, Any] = {
            "first_purchase_at": from_us(purchases[0]) if n else None,
            "last_purchase_at": from_us(purchases[-1]) if n else None,
            "purchases_total": n,
            "revenue_total": self._revenue_prefix[-1] - self._refund_prefix[-1],
            "refunds_total": len(self.refund_at),
            "avg_days_between_purchases": (
                (purchases[-1] - purchases[0]) / (n - 1) / US_PER_DAY if n >= 2 else None
            ),
        }
        starts = [a for a in (purchases[0] if n else None, self._first_subscription_at) if a]
        self._customer_since = min(starts) if starts else None

        # Most customers have no subscription, invoice or ticket: skip those folds.
        f["subscription_status"], self._cancelled_at = "none", None
        if self._subscriptions:
            states = self._subscriptions.values()
            cancelled_at = [at for kind, at in states if kind == k.SUBSCRIPTION_CANCELLED]
            if any(kind == k.SUBSCRIPTION_STARTED for kind, _ in states):
                f["subscription_status"] = "active"
            elif cancelled_at:
                f["subscription_status"], self._cancelled_at = "cancelled", max(cancelled_at)

        f["open_failed_payments"] = (
            sum(1 for kind in self._invoices.values() if kind == k.PAYMENT_FAILED)
            if self._invoices
            else 0
        )
        f["open_tickets"], f["open_ticket_max_priority"] = 0, "none"
        if self._tickets:
            # A resolution that arrived before its opening still closes the ticket.
            open_tickets = [t for t in self._tickets.values() if t[0] is not None and not t[1]]
            f["open_tickets"] = len(open_tickets)
            f["open_ticket_max_priority"] = max(
                (str(t[0]) for t in open_tickets), key=PRIORITIES.index, default="none"
            )
        f["latest_nps"] = self._nps
        f["last_web_activity_at"] = from_us(self._web_at) if self._web_at is not None else None
        f["tracked_total"] = {n: len(ts) for n, ts in self._tracked.items()}
        if not self._tracked:
            f.update(_NO_TRACKED)
        traits = self._traits
        f.update({name: traits.get(name) for name in k.TRAITS} if traits else _NO_TRAITS)
        f.update(_NO_SCORES)  # evaluated on demand: see score_fact and with_scores
        return f

    def score_fact(self, name: str, now: int, served: ServedModel | None) -> Any:
        """A score fact as of `now` (a day, as scoring's as-of date) under `served`: None
        without a served model (or its RFM cut points, for an RFM fact) or, for the
        customer's own scores, without a purchase."""
        if served is None:
            return None
        if name == "clv_top_decile":
            return served.clv_top_decile
        if name in rfm.RFM_FACTS:
            r = self.rfm(now, served.rfm)
            if r is None:
                return None
            if name == "rfm_cell":
                return r.cell
            if name == "rfm_segment":
                return r.segment
            return (
                r.recency
                if name == "rfm_recency"
                else (r.frequency if name == "rfm_frequency" else r.monetary)
            )
        summary = self.score_summary(now)
        if summary is None:
            return None
        scored = self._scored  # (served, T, clv or None, churn) of the last call
        T = summary.T_days
        if (
            not scored
            or scored[0] is not served
            or scored[1] != T
            or (scored[2] is None and name == "clv")
        ):
            if name == "clv":  # the whole score; P(alive) alone is a few logarithms
                score = served.score(summary)
                # Money is published to the cent (as scoring does): rules see that value.
                scored = (served, T, round(score.clv, 2), score.churn_probability)
            else:
                scored = (served, T, None, 1.0 - served.p_alive(summary))
            self._scored = scored
        return scored[2] if name == "clv" else scored[3]

    def score_summary(self, now: int) -> Summary | None:
        """The purchase summary scoring would compute as of `now`'s day (None: no purchase)."""
        base = self._score_summary()
        if base is None:
            return None
        x, first_day, t_x, mean_repeat_spend, mean_spend, _, _ = base
        return Summary(x, t_x, now // US_PER_DAY - first_day, mean_repeat_spend, mean_spend)

    def rfm_measures(self, now: int) -> tuple[int, int, float] | None:
        """Scoring's RFM measures as of `now`'s day: days since the last purchase day,
        purchase days and spend net of refunds (None: no purchase that counts)."""
        base = self._score_summary()
        if base is None:
            return None
        x, _, _, _, _, last_day, monetary = base
        return now // US_PER_DAY - last_day, x + 1, monetary

    def rfm(self, now: int, cuts: rfm.Cuts | None) -> rfm.Rfm | None:
        """The customer's RFM as of `now` under `cuts`, as scoring scores it."""
        measures = self.rfm_measures(now) if cuts is not None else None
        if measures is None or cuts is None:
            return None
        return rfm.score(cuts, *measures)

    def with_scores(
        self, facts: dict[str, Any], now: int, served: ServedModel | None
    ) -> dict[str, Any]:
        """`facts` with every score fact filled in (what is stored and published)."""
        if served is None:
            return facts
        return {**facts, **{n: self.score_fact(n, now, served) for n in SCORE_FACTS}}

    def _score_summary(self) -> _Summary | None:
        """(x, first day, t_x in days, mean repeat spend, mean spend, last day, total
        spend) of the orders that count (a fully refunded one does not), grouped by day:
        scoring's summary."""
        if self._summary is not False:
            return self._summary  # type: ignore[return-value]
        by_day: dict[int, float] = {}
        total = Decimal(0)
        for day, amount, refunded in self._orders.values():
            if day is None or (refunded > 0 and refunded >= amount):
                continue
            by_day[day] = by_day.get(day, 0.0) + max(0.0, amount - refunded)
            # Scoring adds decimals: so does RFM's monetary, which is compared with cut
            # points that often sit exactly on a common amount. A refund total is a sum
            # of floats: to the billionth it is the decimal sum.
            total += max(Decimal(0), Decimal(repr(amount)) - Decimal(repr(round(refunded, 9))))
        summary = None
        if by_day:
            days = sorted(by_day)
            x, first = len(days) - 1, days[0]
            repeat = sum(by_day[d] for d in days[1:])
            summary = (
                x,
                first,
                days[-1] - first,
                repeat / x if x else 0.0,
                (by_day[first] + repeat) / len(days),
                days[-1],
                float(total),
            )
        self._summary = summary
        return summary


# x, first day, t_x, mean repeat spend, mean spend, last day, total spend (Accumulator).
_Summary = tuple[int, int, int, float, float, int, float]


def to_json(facts: dict[str, Any]) -> dict[str, Any]:
    """The published form: RFC 3339 strings for times, day counts rounded for readability."""
    out = dict(facts)
    for name, value in facts.items():
        kind = type(value)  # exact types: these are our own values
        if kind is float:
            out[name] = round(value, 6)
        elif kind is datetime:
            out[name] = value.isoformat().replace("+00:00", "Z")
    return out


def facts_at(inputs: list[Input], now: int) -> dict[str, Any]:
    """Facts from the inputs with time <= now (inputs sorted)."""
    acc = Accumulator()
    for i in inputs:
        if i.at > now:
            break
        acc.add(i)
    return acc.facts(now)
