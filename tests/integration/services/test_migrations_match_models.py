"""Each service's migrations build exactly the tables its models declare: a column or
index added to one and not the other fails here, not in production."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES = ("clm_ingest", "clm_stage_engine", "clm_scoring", "clm_campaigns")


@pytest.mark.parametrize("package", SERVICES)
async def test_the_migrated_schema_equals_the_models(
    migrated: str, engine: AsyncEngine, package: str
) -> None:
    models = importlib.import_module(f"{package}.models")
    schema = models.SCHEMA

    def ours(name: str | None, type_: str, parent: dict[str, Any]) -> bool:
        if type_ == "schema":
            return name == schema
        return parent.get("schema_name", schema) == schema and name != "alembic_version"

    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(
            sync_conn,
            opts={"include_schemas": True, "include_name": ours, "compare_type": True},
        )
        return list(compare_metadata(context, models.metadata))

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert not differences, "\n".join(map(str, differences))
