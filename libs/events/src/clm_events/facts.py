"""The customer facts the stage engine keeps and publishes (in `lifecycle.stage_changed`
events' `facts`), and that lifecycle rules and campaign conditions may name in CEL.

One list, so a condition naming an unknown fact is refused the same way everywhere.
Values are JSON: times as RFC 3339 strings, money as numbers in the customer's currency.
Purchases are `purchase.completed` and `billing.invoice_paid` events; "now" is the clock of
the evaluation (event time, or the timer's time), so `days_since_*` and the windowed
counts are as of that moment.
"""

from __future__ import annotations

# name -> (CEL type, meaning). "?" = may be null (no such event yet).
FACTS: dict[str, tuple[str, str]] = {
    "first_purchase_at": ("timestamp?", "time of the first purchase"),
    "last_purchase_at": ("timestamp?", "time of the latest purchase"),
    "purchases_30d": ("int", "purchases in the last 30 days"),
    "purchases_90d": ("int", "purchases in the last 90 days"),
    "purchases_365d": ("int", "purchases in the last 365 days"),
    "purchases_total": ("int", "purchases ever"),
    "revenue_30d": ("double", "revenue in the last 30 days, net of refunds"),
    "revenue_90d": ("double", "revenue in the last 90 days, net of refunds"),
    "revenue_365d": ("double", "revenue in the last 365 days, net of refunds"),
    "revenue_total": ("double", "revenue ever, net of refunds"),
    "refunds_total": ("int", "refunds ever"),
    "avg_days_between_purchases": ("double?", "mean gap between purchases, in days"),
    "days_since_last_purchase": ("double?", "days from the latest purchase to now"),
    "days_as_customer": ("double?", "days since the first purchase or subscription start"),
    "subscription_status": ("string", "none, active or cancelled"),
    "days_since_subscription_cancelled": (
        "double?",
        "days since the latest cancellation, while the status is cancelled",
    ),
    "open_failed_payments": ("int", "failed payments not followed by a paid invoice"),
    "open_tickets": ("int", "support tickets opened and not resolved"),
    "open_ticket_max_priority": ("string", "none, low, normal, high or urgent"),
    "latest_nps": ("int?", "the latest NPS score, 0-10"),
    "last_web_activity_at": ("timestamp?", "time of the latest web event"),
    # Named `web.tracked` events ("Product Viewed"): a map from name to count. A name with
    # no event in the window is absent, so test it first:
    # `"Product Viewed" in tracked_30d && tracked_30d["Product Viewed"] >= 3`.
    "tracked_30d": ("map", "web.tracked events in the last 30 days, by event name"),
    "tracked_90d": ("map", "web.tracked events in the last 90 days, by event name"),
    "tracked_365d": ("map", "web.tracked events in the last 365 days, by event name"),
    "tracked_total": ("map", "web.tracked events ever, by event name"),
    "email": ("string?", "trait"),
    "name": ("string?", "trait"),
    "timezone": ("string?", "trait: IANA time zone, e.g. Europe/Berlin"),
    "locale": ("string?", "trait, e.g. de-DE"),
    "clv": (
        "double?",
        "customer lifetime value as of now under the served score model, in the currency "
        "of the purchases (to the cent)",
    ),
    "churn_probability": (
        "double?",
        "churn probability (1 - P(alive)) as of now under the served score model, 0-1",
    ),
    "clv_top_decile": (
        "double?",
        "the CLV at the 90th percentile of the customer base when the served score model "
        "was fitted",
    ),
}
