from fastapi import FastAPI

from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app
from clm_scoring import api, handlers, models, repository
from clm_scoring.config import Settings
from clm_scoring.jobs import Jobs, Scorer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime.of("scoring", settings, models)
    assert rt.tombstones is not None  # from models.privacy_tombstones
    scorer = Scorer(settings, rt.topics)
    jobs = Jobs(scorer, rt.sessions, rt.tombstones)
    rt.add_consumer(
        group_id=settings.group_id,
        # purchase.completed and purchase.refunded share the purchase domain topic;
        # identity.linked travels on the web topic, whose other events are passed over.
        topics=[rt.topics.domain("purchase.completed"), rt.topics.domain("identity.linked")],
        handler=handlers.events_handler(scorer, tombstones=rt.tombstones),
        decode=handlers.decode,
    )
    rt.add_erasure(group_id=f"{settings.group_id}-privacy", erase=repository.erase)
    rt.add_background("refit", jobs.refit_loop)
    rt.add_background("rescore", jobs.rescore_loop)
    rt.add_background("rfm", jobs.rfm_loop)
    app = create_service_app(rt, title="CLM scoring", routers=[api.router])
    app.state.jobs = jobs
    return app
