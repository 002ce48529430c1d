import time

from fastapi import FastAPI

from clm_events.envelope import decode_kafka_record
from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app
from clm_ingest import api, deadletter_api, handlers, models, privacy, privacy_api
from clm_ingest.config import Settings
from clm_ingest.deadletter_store import DeadletterStore
from clm_ingest.domain.identity import Guards
from clm_ingest.domain.rate_limit import RateLimiter
from clm_ingest.identity import IdentityGraph
from clm_ingest.intake import Intake


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime.of("ingest", settings, models)
    assert rt.tombstones is not None
    graph = IdentityGraph(
        Guards.of(settings.identity_max_anonymous_ids, settings.identity_blocked_ids),
        rt.tombstones,
    )
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[rt.topics.inbound],
        handler=handlers.inbound_gate(rt.topics, graph),
        decode=handlers.inbound_decoder(settings.max_event_bytes, decode_kafka_record),
    )
    rt.add_consumer(
        group_id=f"{settings.group_id}-privacy",
        topics=[rt.topics.privacy],
        handler=privacy.privacy_handler(
            rt.tombstones, rt.topics.privacy, [privacy.SERVICE, *settings.privacy_urls]
        ),
    )
    deadletters = DeadletterStore(
        rt.sessions,
        rt.tombstones,
        bootstrap_servers=settings.common.kafka_bootstrap_servers,
        topic=rt.topics.deadletter,
        group_id=f"{settings.group_id}-deadletter-store",
    )
    rt.add_background("deadletter-store", deadletters.run)
    app = create_service_app(
        rt, title="CLM ingest", routers=[api.router, deadletter_api.router, privacy_api.router]
    )
    app.state.intake = Intake(
        producer=rt.producer,
        topics=rt.topics,
        limiter=RateLimiter(
            settings.rate_limit_events_per_second, settings.rate_limit_burst, time.monotonic
        ),
        sessions=rt.sessions,
        processed=models.processed_events,
        # Its own group: a dead letter of a downstream service, replayed through the
        # inbound topic, must not look like a duplicate of what came in over HTTP.
        claim_group=f"{settings.group_id}-http",
        graph=graph,
        max_event_bytes=settings.max_event_bytes,
        publish_timeout=settings.publish_timeout,
        retry_after=settings.retry_after_seconds,
    )
    return app
