from fastapi import FastAPI

from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app
from clm_scoring import handlers, models
from clm_scoring.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime("scoring", settings, outbox=models.outbox, processed=models.processed_events)
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[rt.topics.domain("purchase.completed")],
        handler=handlers.handle,
    )
    return create_service_app(rt, title="CLM scoring")
