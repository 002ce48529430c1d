from fastapi import FastAPI

from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app
from clm_ingest import handlers, models
from clm_ingest.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime("ingest", settings, outbox=models.outbox, processed=models.processed_events)
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[rt.topics.inbound],
        handler=handlers.inbound_gate(rt.topics),
    )
    return create_service_app(rt, title="CLM ingest")
