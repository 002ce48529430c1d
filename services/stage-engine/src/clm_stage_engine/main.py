from fastapi import FastAPI

from clm_events.service import Runtime
from clm_events.service import create_app as create_service_app
from clm_stage_engine import api, models
from clm_stage_engine import repository as repo
from clm_stage_engine.config import Settings
from clm_stage_engine.handlers import StageEngine
from clm_stage_engine.timers import TimerLoop


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = Runtime.of("stage-engine", settings, models)
    engine = StageEngine(
        rt.topics,
        look_ahead=settings.timer_look_ahead_days,
        settle_seconds=settings.settle_seconds,
    )
    rt.add_consumer(
        group_id=settings.group_id,
        topics=[*rt.topics.domains, rt.topics.models],
        handler=engine.handle,
    )
    timer = TimerLoop(
        engine,
        rt.sessions,
        tombstones=rt.tombstones,
        batch_size=settings.timer_batch_size,
        workers=settings.timer_workers,
        interval=settings.timer_interval,
        on_committed=rt.relay.wake if rt.relay else None,
    )
    rt.add_erasure(group_id=f"{settings.group_id}-privacy", erase=repo.erase)
    rt.add_background("timer", timer.run)
    app = create_service_app(rt, title="CLM stage engine", routers=[api.router])
    app.state.stage_engine = engine
    app.state.timer = timer
    return app
