"""Reading request bodies: size limits (also after gzip), JSON, CloudEvents content modes."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from clm_events.envelope import Event, parse_binary, parse_event

BATCH_TYPE = "application/cloudevents-batch+json"
STRUCTURED_TYPE = "application/cloudevents+json"
SUPPORTED = (
    f"{STRUCTURED_TYPE} (one event), {BATCH_TYPE} (a JSON array of events), "
    "or binary mode (ce-* headers, the data as the body)"
)


class BodyError(Exception):
    """The request as a whole cannot be read; nothing in it was considered."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Events:
    """What a request carries: items, how to parse one, and whether it is a batch."""

    items: Sequence[Any]
    parse: Callable[[Any], Event]
    batch: bool


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read(request: Request, limit: int, what: str) -> bytes:
    """The body, refused with 413 past `limit` bytes (compressed or not), without ever
    holding more than that in memory."""
    too_large = BodyError(413, f"{what} is over the {limit}-byte limit")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise BodyError(415, f"unsupported Content-Encoding '{encoding[:32]}'; use gzip or none")
    inflater = zlib.decompressobj(wbits=31)  # gzip container
    try:
        body = inflater.decompress(raw, limit + 1)  # bounded: a gzip bomb stops at the limit
    except zlib.error as exc:
        raise BodyError(400, f"body is not valid gzip: {exc}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise too_large
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(
            400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, NaN, nesting, huge integers
        raise BodyError(400, f"body is not valid JSON: {type(exc).__name__}") from None


def _parse_object(item: Any) -> Event:
    return parse_event(item)  # a non-object item is reported as such, with its index


async def cloudevents(request: Request, *, max_event: int, max_request: int) -> Events:
    """One CloudEvent (structured or binary mode) or a batch, by content type."""
    media = media_type(request)
    binary = "ce-specversion" in request.headers
    if media == BATCH_TYPE:
        body = load_json(await read(request, max_request, "batch"))
        if not isinstance(body, list):
            raise BodyError(400, "a batch must be a JSON array of CloudEvents")
        return Events(body, _parse_object, batch=True)
    if media == STRUCTURED_TYPE or (media == "application/json" and not binary):
        body = load_json(await read(request, max_event, "event"))
        if isinstance(body, list) and media == "application/json":
            return Events(body, _parse_object, batch=True)  # lenient: a plain JSON array
        if not isinstance(body, dict):
            raise BodyError(400, f"a structured event must be a JSON object; or send {BATCH_TYPE}")
        return Events([body], _parse_object, batch=False)
    if binary:
        data = await read(request, max_event, "event data")
        attributes = {
            name[3:]: value for name, value in request.headers.items() if name.startswith("ce-")
        }
        content_type = request.headers.get("content-type")
        return Events([data], lambda raw: parse_binary(attributes, raw, content_type), batch=False)
    raise BodyError(415, f"unsupported content type '{media[:64]}'; send {SUPPORTED}")


async def segment(request: Request, *, limit: int, batch: bool) -> tuple[dict[str, Any], list[Any]]:
    """A Segment body (a JSON object, whatever the content type: analytics.js sends
    text/plain) and its messages: the body itself, or the `batch` array of /v1/batch."""
    body = load_json(await read(request, limit, "batch" if batch else "message"))
    if not isinstance(body, dict):
        raise BodyError(400, "body must be a JSON object")
    if not batch:
        return body, [body]
    messages = body.get("batch")
    if not isinstance(messages, list):
        raise BodyError(400, 'body must be {"batch": [message, ...]}')
    return body, messages
