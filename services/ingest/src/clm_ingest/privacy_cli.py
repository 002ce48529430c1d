"""`clm-ingest privacy erase|status|list|export`: the privacy API for operators.

It calls ingest over HTTP with an admin key (`--key` or `CLM_API_KEY`), like the console,
so the audit trail names the key that asked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import typer

from clm_ingest.config import Settings

cli = typer.Typer(help="Erase or export a customer in every service.", no_args_is_help=True)

URL = typer.Option(None, help="Ingest's base URL (default: this host and the configured port).")
KEY = typer.Option(..., envvar="CLM_API_KEY", help="An admin key.", show_default=False)


def _call(url: str | None, key: str, method: str, path: str, **kwargs: Any) -> Any:
    settings = Settings()
    base = url or f"http://{settings.host}:{settings.port}"
    try:
        r = httpx.request(
            method,
            f"{base.rstrip('/')}{path}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"ingest did not answer at {base}: {exc}", err=True)
        raise typer.Exit(2) from None
    if r.status_code >= 400:
        detail = r.json().get("detail", r.text) if r.text else r.reason_phrase
        typer.echo(f"HTTP {r.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    return r.json()


def _show(request: dict[str, Any]) -> None:
    typer.echo(f"{request['request_id']}\t{request['status']}\trequested {request['requested_at']}")
    for service, done in request["services"].items():
        state = f"done {done['completed_at']} {json.dumps(done['erased'])}" if done else "pending"
        typer.echo(f"  {service}\t{state}")


@cli.command()
def erase(
    customer_id: str = typer.Option(None, "--customer-id", help="The customer to erase."),
    email: str = typer.Option(None, help="Erase every customer carrying this email."),
    wait: float = typer.Option(0, help="Seconds to wait for every service to finish."),
    key: str = KEY,
    url: str = URL,
) -> None:
    """Erase a customer (and the anonymous ids linked to it) in every service."""
    if (customer_id is None) == (email is None):
        raise typer.BadParameter("give exactly one of --customer-id and --email")
    body = {"customer_id": customer_id} if customer_id else {"email": email}
    request = _call(url, key, "POST", "/v1/privacy/erasures", json=body)
    deadline = time.monotonic() + wait
    while request["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(1)
        request = _call(url, key, "GET", f"/v1/privacy/erasures/{request['request_id']}")
    _show(request)
    if wait and request["status"] != "completed":
        raise typer.Exit(3)


@cli.command()
def status(request_id: str, key: str = KEY, url: str = URL) -> None:
    """Show an erasure request: which services finished and what they erased."""
    _show(_call(url, key, "GET", f"/v1/privacy/erasures/{quote(request_id, safe='')}"))


@cli.command("list")
def list_(limit: int = typer.Option(20, min=1, max=500), key: str = KEY, url: str = URL) -> None:
    """The latest erasure requests (the audit trail)."""
    for request in _call(url, key, "GET", "/v1/privacy/erasures", params={"limit": limit})[
        "erasures"
    ]:
        _show(request)


@cli.command()
def export(
    customer_id: str,
    output: Path = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    key: str = KEY,
    url: str = URL,
) -> None:
    """Everything CLM holds about a customer, as one JSON document."""
    document = _call(url, key, "GET", f"/v1/privacy/exports/{quote(customer_id, safe='')}")
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
        typer.echo(f"wrote {output} ({len(text.encode())} bytes)", err=True)
