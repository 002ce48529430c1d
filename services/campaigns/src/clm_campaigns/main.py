from fastapi import FastAPI

from clm_campaigns import handlers, models
from clm_campaigns.config import Settings
from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime("campaigns", settings, outbox=models.outbox, processed=models.processed_events)
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[rt.topics.transitions, rt.topics.scores, *rt.topics.domains],
        handler=handlers.handle,
    )
    return create_service_app(rt, title="CLM campaigns")
