"""The console's API proxy: `/api/<service>/v1/...` is forwarded to that service with the
caller's own key, so every service still decides what a read or an admin key may do.

Only `/v1/` paths pass (never `/metrics`, `/docs` or anything outside the API), bodies
are capped, and a service that does not answer in time gives a 504 instead of a hang.
"""

from __future__ import annotations

from urllib.parse import unquote

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter()

REQUEST_HEADERS = ("authorization", "content-type", "if-match", "accept")
RESPONSE_HEADERS = ("content-type", "etag", "retry-after", "www-authenticate")
METHODS = ["GET", "POST", "PUT", "DELETE"]


class BodyTooLarge(Exception):
    pass


def api_path(raw_path: bytes, service: str) -> str | None:
    """The path to forward (still percent-encoded, so an id holding '/' stays one
    segment), or None unless it is a plain `v1/...` path."""
    prefix = f"/api/{service}/"
    path = raw_path.decode("latin-1")
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :]
    segments = rest.split("/")
    if segments[0] != "v1" or len(segments) < 2:
        return None
    for segment in segments[1:]:
        if not segment or {".", ".."} & set(unquote(segment).split("/")):
            return None
    return "/" + rest


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@router.api_route("/api/{service}/{path:path}", methods=METHODS, include_in_schema=False)
async def forward(service: str, path: str, request: Request) -> Response:
    settings = request.app.state.settings
    base = settings.backends().get(service)
    target = api_path(request.scope.get("raw_path") or request.url.path.encode(), service)
    if base is None or target is None:
        return JSONResponse(
            {"detail": "the console forwards only /api/<service>/v1/... paths"}, status_code=404
        )
    try:
        body = await _body(request, settings.max_body_bytes)
    except BodyTooLarge:
        return JSONResponse(
            {"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413
        )
    headers = {k: v for k in REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
    query = request.url.query
    url = base.rstrip("/") + target + (f"?{query}" if query else "")
    client: httpx.AsyncClient = request.app.state.client
    try:
        answer = await client.request(request.method, url, content=body, headers=headers)
    except httpx.TimeoutException:
        return JSONResponse(
            {"detail": f"the {service} service did not answer in time"}, status_code=504
        )
    except httpx.TransportError:
        return JSONResponse({"detail": f"the {service} service is unreachable"}, status_code=502)
    out = {k: v for k in RESPONSE_HEADERS if (v := answer.headers.get(k)) is not None}
    out["cache-control"] = "no-store"  # customer data is personal: keep it out of caches
    return Response(answer.content, status_code=answer.status_code, headers=out)
