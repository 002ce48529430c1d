"""HTTP errors in the shape FastAPI documents for its own 422s, so a client parses one
kind of error whether pydantic or a handler found the problem."""

from __future__ import annotations

from fastapi import HTTPException


def unprocessable(where: str, *loc: str | int, msg: str) -> HTTPException:
    """A 422 naming the field: `where` is "body", "query" or "path", `loc` the path
    inside it."""
    return HTTPException(422, [{"loc": [where, *loc], "msg": msg, "type": "value_error"}])
