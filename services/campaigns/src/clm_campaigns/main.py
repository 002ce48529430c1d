from datetime import timedelta

from fastapi import FastAPI

from clm_campaigns import api, api_journeys, api_segments, models, privacy
from clm_campaigns.clock import Clock
from clm_campaigns.config import Settings
from clm_campaigns.dispatcher import Dispatcher
from clm_campaigns.domain.policy import GlobalCap
from clm_campaigns.handlers import Campaigns, TriggerCache
from clm_campaigns.journeys import JourneyCache, JourneyRunner
from clm_campaigns.segments import Recompute, SegmentCache
from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime.of("campaigns", settings, models)
    relay = rt.relay
    assert rt.tombstones is not None  # models defines privacy_tombstones
    clock, journeys = Clock(controlled=settings.clock_control), JourneyCache()
    dispatcher = Dispatcher(
        clock=clock,
        journeys=journeys,
        sessions=rt.sessions,
        settings=settings,
        actions_topic=rt.topics.actions,
        tombstones=rt.tombstones,
        on_outbox=relay.wake if relay is not None else None,
    )
    segment_cache = SegmentCache()
    recompute = Recompute(
        rt.sessions,
        segment_cache,
        size_interval=timedelta(seconds=settings.segment_size_interval_seconds),
        size_retention=timedelta(days=settings.segment_size_retention_days),
    )
    campaigns = Campaigns(
        triggers=TriggerCache(),
        actions_topic=rt.topics.actions,
        global_cap=GlobalCap(
            settings.global_cap_max,
            timedelta(seconds=settings.global_cap_period_seconds),
            {
                channel: (cap.max, timedelta(seconds=cap.period_seconds))
                for channel, cap in settings.global_cap_channels.items()
            },
        ),
        default_timezone=settings.default_timezone,
        on_commit=dispatcher.wake,
        segments=segment_cache,
        journeys=journeys,
        clock=clock,
    )
    runner = JourneyRunner(
        rt.sessions,
        journeys,
        campaigns,
        clock,
        page=settings.journey_page_size,
        poll_interval=settings.journey_poll_interval,
    )
    campaigns.on_journeys = runner.wake
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[rt.topics.transitions, rt.topics.scores, *rt.topics.domains],
        handler=campaigns,
    )
    rt.add_erasure(group_id=f"{settings.group_id}-privacy", erase=privacy.erase)
    rt.add_background("dispatcher", dispatcher.run)
    rt.add_background("segment-recompute", recompute.run)
    rt.add_background("journeys", runner.run)
    app = create_service_app(
        rt, title="CLM campaigns", routers=[api.router, api_segments.router, api_journeys.router]
    )
    app.state.dispatcher = dispatcher
    app.state.campaigns = campaigns  # the API enrolls customers through it
    app.state.recompute = recompute  # woken when a segment is saved
    app.state.journeys = runner
    app.state.clock = clock
    return app
