"""`make chaos`: replay a population twice, once undisturbed and once while services are
SIGKILLed and restarted, the broker is paused (SIGSTOP/SIGCONT) and PostgreSQL is stopped;
then compare what the two runs decided: stages, transition history, scores, actions, and
the webhooks received (a re-delivery must carry the same webhook-id).

Event time is the clock: the population ends 200 days before today, so by the time the
timers have run every customer has settled, and nothing depends on when the run happened
(except scores, which are as of today: both runs are compared on the same day). Stages,
histories and actions are read back before a final refit, scores after it.

    python system/chaos.py              # 100k events, 3 kills per service, 30 s pauses
    python system/chaos.py --quick      # the CI run: 450 events, one kill per service

The quick run differs only in size and in pace: a killed service restarts while the next
faults go on (so every kill lands while events flow), and the fault-free run goes on at
the same time as the chaos run, on its own stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    CustomerState,
    Sender,
    System,
    create_trigger,
    refit,
    send_paced,
    served_model_adopted,
    service_env,
    settle,
    snapshot,
)
from population import Draw, draw_population
from receivers import SmtpServer, WebhookReceiver

log = logging.getLogger("chaos")

WATCHED_STAGES = ("onboarding", "active", "loyal", "at_risk", "lapsed", "won_back")


def triggers(hook_url: str) -> list[dict[str, Any]]:
    """One webhook trigger per watched stage and one email trigger. Payloads use only the
    transition itself: what campaigns knows of a customer's traits at the moment a
    transition arrives depends on processing order, the transition does not."""
    payload = (
        '{"customer": {{ customer.id | tojson }}, "to": {{ event.data.to_stage | tojson }}, '
        '"from": {{ event.data.from_stage | tojson }}, "at": {{ event.data.at | tojson }}}'
    )
    # The population is history (it ends 200 days ago): without a maximum age these
    # triggers act on it, which is what this run puts under faults.
    out: list[dict[str, Any]] = [
        {
            "name": f"to {stage}",
            "on": {"kind": "transition", "to_stage": stage},
            "action": {"channel": "webhook", "url": hook_url, "payload": payload},
            "max_age_seconds": None,
        }
        for stage in WATCHED_STAGES
    ]
    out.append(
        {
            "name": "advocate mail",
            "on": {"kind": "transition", "to_stage": "advocate"},
            "max_age_seconds": None,
            "action": {
                "channel": "email",
                "to": "{{ customer.id }}@example.com",
                "subject": "Thank you",
                "body": "You moved to {{ event.data.to_stage }} on {{ event.data.at }}.",
            },
        }
    )
    return out


@dataclass
class Faults:
    kills_per_service: int = 3
    broker_pause: float = 30.0
    postgres_stop: float = 30.0
    services: tuple[str, ...] = ("ingest", "stage-engine", "scoring", "campaigns")
    # Restart a killed service without waiting for it: the next faults go on meanwhile
    # (another service's kill; the same service's next kill waits for its restart).
    overlap: bool = False
    done: list[str] = field(default_factory=list)

    def schedule(self, window: float, rng: random.Random) -> list[tuple[float, str]]:
        kinds = [f"kill {s}" for s in self.services for _ in range(self.kills_per_service)]
        if self.broker_pause:
            kinds.append("pause broker")
        if self.postgres_stop:
            kinds.append("stop postgres")
        rng.shuffle(kinds)
        # Random moments, in order; each fault starts after the previous one ended. Restarts
        # that overlap end meanwhile: their kills come early enough to end while events flow.
        span = window * 0.6 if self.overlap else window
        moments = sorted(rng.uniform(0, span) for _ in kinds)
        return list(zip(moments, kinds, strict=True))

    def run(self, system: System, plan: list[tuple[float, str]], began: float) -> None:
        """Runs in the main thread: processes it starts die with the thread that started them."""
        stack = system.stack
        restarting: set[str] = set()

        def wait_restarted(names: set[str]) -> None:
            stack.wait_healthy([stack.spec(n) for n in sorted(names)], timeout=120)
            restarting.difference_update(names)

        for at, kind in plan:
            delay = began + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            if kind.startswith("kill "):
                name = kind.removeprefix("kill ")
                if name in restarting:
                    wait_restarted({name})
                stack.kill_service(name)
                stack.restart_service(name, timeout=120, wait=not self.overlap)
                if self.overlap:
                    restarting.add(name)
            else:
                wait_restarted(restarting)  # the broker and the database fail on their own
            if kind == "pause broker":
                assert stack.broker is not None
                stack.broker.pause()
                time.sleep(self.broker_pause)
                stack.broker.resume()
            elif kind == "stop postgres":
                assert stack.postgres is not None
                stack.postgres.stop()
                time.sleep(self.postgres_stop)
                stack.postgres.start()
            self.done.append(
                f"{time.monotonic() - began:7.1f}s  {kind} ({time.monotonic() - t0:.1f}s)"
            )
            log.info("fault: %s", self.done[-1])
        wait_restarted(restarting)


@dataclass
class RunResult:
    name: str
    state: dict[str, CustomerState]
    webhooks: dict[str, list[bytes]]  # webhook-id -> bodies received
    mails: dict[str, int]  # action id -> messages received
    send_seconds: float
    settle_seconds: float
    sender_retries: int
    faults: list[str]


def run_once(
    name: str,
    events: list[dict[str, Any]],
    customers: list[str],
    rate: float,
    faults: Faults | None,
    seed: int,
    workdir: Path,
    quiet: float = 4.0,
) -> RunResult:
    smtp = SmtpServer()
    smtp.start()
    hook = WebhookReceiver()
    # The whole population's history arrives within the send window, each customer's
    # events spread over it: time moves a customer only once that has passed (with room
    # for the faults' stalls), as it would for a history imported customer by customer.
    settle_window = 1.5 * len(events) / rate + 5.0
    system = System(
        workdir / name, extra_env=service_env(smtp_port=smtp.port, settle_seconds=settle_window)
    )
    loop = asyncio.new_event_loop()
    results: dict[str, Any] = {}
    try:
        system.start()
        loop.run_until_complete(hook.start())

        async def setup() -> None:
            await system.make_keys()
            for t in triggers(hook.url):
                await create_trigger(system, t)
            # Rules read scores under the served model: it must be in place before the
            # first event, as it is in a running installation.
            await served_model_adopted(system)

        loop.run_until_complete(setup())
        assert system.keys is not None
        keys = system.keys

        async def drive() -> None:
            async with Sender(system.url("ingest"), system.bootstrap, keys) as sender:
                results["send"] = await send_paced(sender, events, rate)
                results["retries"] = sender.retries
            # Keep the loop (and the webhook receiver on it) running until the faults end.
            await asyncio.to_thread(faults_over.wait)

        # The sender (and the webhook receiver) run on a loop in another thread while
        # this thread injects faults.
        def loop_thread() -> None:
            asyncio.set_event_loop(loop)
            sending.append(loop.create_task(drive()))
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(sending[0])

        sending: list[asyncio.Task[None]] = []

        faults_over = threading.Event()
        worker = threading.Thread(target=loop_thread, name="sender")
        began = time.monotonic()
        worker.start()
        if faults is not None:
            window = max(len(events) / rate, 10.0) * 1.1
            try:
                faults.run(system, faults.schedule(window, random.Random(seed)), began)
            except BaseException:
                # Stop sending, so the loop is free for the clean-up below.
                loop.call_soon_threadsafe(lambda: [t.cancel() for t in sending])
                worker.join()
                raise
            finally:
                faults_over.set()
        faults_over.set()
        worker.join()
        log.info("%s: sent in %.1fs", name, results["send"])
        settled = loop.run_until_complete(settle(system, quiet=quiet, timeout=1800))
        t0 = time.monotonic()
        state = loop.run_until_complete(snapshot(system, customers))
        log.info(
            "%s: settled after %.1fs, read back in %.1fs; refitting",
            name,
            settled,
            time.monotonic() - t0,
        )
        # Scores as of the same data: one more fit and rescore, then let it propagate.
        # Read before it, the histories: the refit is a model change at the wall clock,
        # which the two runs reach at different times.
        loop.run_until_complete(refit(system))
        settled += loop.run_until_complete(settle(system, quiet=quiet, timeout=1800))
        scores = loop.run_until_complete(snapshot(system, customers, scores_only=True))
        for cid, after in scores.items():
            state[cid].score = after.score
        webhooks: dict[str, list[bytes]] = {}
        for d in hook.deliveries:
            webhooks.setdefault(d.webhook_id, []).append(d.body)
        mails = Counter(m.action_id for m in smtp.mails)
        return RunResult(
            name,
            state,
            webhooks,
            dict(mails),
            results["send"],
            settled,
            results["retries"],
            faults.done if faults else [],
        )
    finally:
        loop.run_until_complete(hook.stop())
        loop.close()
        system.stop()
        smtp.stop()


# -- comparison ------------------------------------------------------------------------


@dataclass
class Comparison:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, what: str, base: Any, chaos: Any, verdict: str) -> None:
        self.rows.append((what, str(base), str(chaos), verdict))

    def check(self, what: str, base: Any, chaos: Any, ok: bool) -> None:
        self.add(what, base, chaos, "ok" if ok else "DIFFERENT")
        if not ok:
            self.failures.append(what)


def _entries(transitions: list[tuple[Any, ...]]) -> dict[str, str]:
    """Transition id -> its customer entry (`<stage>#<n>`), as campaigns names entries."""
    seen: Counter[str] = Counter()
    out = {}
    for t in transitions:
        seen[t[3]] += 1
        out[f"clm/stage-engine/{t[0]}"] = f"{t[3]}#{seen[t[3]]}"
    return out


def compare(base: RunResult, chaos: RunResult) -> Comparison:
    c = Comparison()
    ids = sorted(base.state)
    stage_diff = [i for i in ids if base.state[i].stage != chaos.state[i].stage]
    c.check(
        "customers with a stage",
        sum(1 for i in ids if base.state[i].stage),
        sum(1 for i in ids if chaos.state[i].stage),
        not stage_diff,
    )
    c.check("customers whose stage differs", 0, len(stage_diff), not stage_diff)
    bt = Counter((i, t) for i in ids for t in base.state[i].transitions)
    ct = Counter((i, t) for i in ids for t in chaos.state[i].transitions)
    c.check("transitions", sum(bt.values()), sum(ct.values()), bt == ct)
    c.check(
        "  lost / extra", "-", f"{sum((bt - ct).values())} / {sum((ct - bt).values())}", bt == ct
    )
    scored = [i for i in ids if base.state[i].score is not None]
    score_diff = [i for i in ids if base.state[i].score != chaos.state[i].score]
    c.check(
        "scores (after a final refit)",
        len(scored),
        len(scored) - len(score_diff) + sum(1 for i in score_diff if base.state[i].score is None),
        not score_diff,
    )

    def split(run: RunResult) -> tuple[Counter[tuple[str, str, str]], int, int, Counter[str]]:
        """Deliveries per customer entry of the final history; deliveries caused by
        transitions a late event rewrote afterwards (published, sent, then retracted);
        entries delivered twice; and every suppression by reason."""
        final: Counter[tuple[str, str, str]] = Counter()
        retracted = 0
        reasons: Counter[str] = Counter()
        for i in ids:
            entries = _entries(run.state[i].transitions)
            for a in run.state[i].actions:
                if a["status"] in ("suppressed", "held_out"):
                    reasons[a["reason"] or "?"] += 1
                if a["status"] != "delivered":
                    continue
                if a["cause_event"] not in entries:
                    retracted += 1
                if a["entry"] in entries.values():
                    final[(i, a["trigger"], a["entry"])] += 1
        twice = sum(n - 1 for n in final.values() if n > 1)
        return final, retracted, twice, reasons

    ba, b_retracted, b_twice, b_reasons = split(base)
    ca, c_retracted, c_twice, c_reasons = split(chaos)
    lost, extra = len(set(ba) - set(ca)), len(set(ca) - set(ba))
    c.check("customer entries acted on", len(ba), len(ca), set(ba) == set(ca))
    c.check("  lost / extra", "-", f"{lost} / {extra}", lost == extra == 0)
    c.check("  entries acted on twice", b_twice, c_twice, b_twice == c_twice == 0)
    c.add("delivered on retracted transitions", b_retracted, c_retracted, "info")
    c.add(
        "suppressed or held out",
        sum(b_reasons.values()),
        sum(c_reasons.values()),
        "info",
    )
    for reason in sorted(set(b_reasons) | set(c_reasons)):
        c.add(f"  {reason}", b_reasons[reason], c_reasons[reason], "info")

    for run in (base, chaos):
        delivered = {
            a["id"]
            for i in ids
            for a in run.state[i].actions
            if a["channel"] == "webhook" and a["status"] == "delivered"
        }
        received = set(run.webhooks)
        redelivered = {k: v for k, v in run.webhooks.items() if len(v) > 1}
        same_body = all(len(set(v)) == 1 for v in redelivered.values())
        ok = delivered <= received and received <= delivered | {
            a["id"] for i in ids for a in run.state[i].actions
        }
        c.check(f"{run.name}: webhook ids received / delivered", len(received), len(delivered), ok)
        c.check(
            f"{run.name}: re-delivered webhooks (same id, same body)",
            len(redelivered),
            "same" if same_body else "BODY CHANGED",
            same_body,
        )
        mailed = {
            a["id"]
            for i in ids
            for a in run.state[i].actions
            if a["channel"] == "email" and a["status"] == "delivered"
        }
        c.check(
            f"{run.name}: emails received / delivered",
            len(run.mails),
            len(mailed),
            mailed <= set(run.mails),
        )
    return c


def print_report(base: RunResult, chaos: RunResult, comp: Comparison, events: int) -> None:
    print(f"\nchaos run: {events} events, {len(base.state)} customers")
    print("faults injected:")
    for f in chaos.faults:
        print(f"  {f}")
    print(
        f"\n{'':<48}{'fault-free':>14}{'chaos':>14}\n"
        f"{'send time (s)':<48}{base.send_seconds:>14.1f}{chaos.send_seconds:>14.1f}\n"
        f"{'settle time after sending (s)':<48}{base.settle_seconds:>14.1f}"
        f"{chaos.settle_seconds:>14.1f}\n"
        f"{'sender retries':<48}{base.sender_retries:>14}{chaos.sender_retries:>14}"
    )
    print(f"\n{'compared':<48}{'fault-free':>14}{'chaos':>14}  verdict")
    for what, b, c, verdict in comp.rows:
        print(f"{what:<48}{b:>14}{c:>14}  {verdict}")
    print(
        "\nRESULT:", "identical" if not comp.failures else "DIFFERENT: " + ", ".join(comp.failures)
    )


def draw_events(n_events: int, seed: int) -> list[dict[str, Any]]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = today - timedelta(days=200)
    # About 9 events per customer with these shares; draw, then trim to the size asked.
    customers = max(20, n_events // 9)
    events = draw_population(Draw(customers=customers, end=end, seed=seed))
    while len(events) < n_events:
        customers = int(customers * n_events / len(events)) + 10
        events = draw_population(Draw(customers=customers, end=end, seed=seed))
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="450 events, one kill per service, no pauses, both runs at once",
    )
    parser.add_argument("--events", type=int)
    parser.add_argument("--rate", type=float, help="events/s sent")
    parser.add_argument("--kills", type=int, help="SIGKILLs per service")
    parser.add_argument("--pause", type=float, help="broker pause seconds (0: none)")
    parser.add_argument("--pg-stop", type=float, help="PostgreSQL stop seconds (0: none)")
    parser.add_argument("--quiet", type=float, help="seconds without progress that mean settled")
    parser.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        help="run the fault-free and the chaos run at the same time (default: with --quick)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, help="keep the stacks' data and logs there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "httpx", "aiokafka", "clm_devstack", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    n = args.events or (450 if args.quick else 100_000)
    # Quick: sending lasts about the 10 s fault window, so every kill lands mid-stream.
    rate = args.rate or (50.0 if args.quick else 500.0)
    quiet = args.quiet or 4.0
    parallel = args.parallel if args.parallel is not None else args.quick
    faults = Faults(
        kills_per_service=args.kills if args.kills is not None else (1 if args.quick else 3),
        broker_pause=args.pause if args.pause is not None else (0.0 if args.quick else 30.0),
        postgres_stop=args.pg_stop if args.pg_stop is not None else (0.0 if args.quick else 30.0),
        overlap=args.quick,
    )
    events = draw_events(n, args.seed)
    customers = sorted({e["subject"] for e in events})
    log.info("%d events for %d customers", len(events), len(customers))
    with (
        contextlib.nullcontext(str(args.workdir))
        if args.workdir
        else tempfile.TemporaryDirectory(prefix="clm-chaos-")
    ) as tmp:
        common = (events, customers, rate)
        if parallel:
            # The fault-free stack lives in a worker thread (its children die with the
            # thread that started them); faults are injected from this one.
            with ThreadPoolExecutor(1, thread_name_prefix="fault-free") as pool:
                future = pool.submit(
                    run_once, "fault-free", *common, None, args.seed, Path(tmp), quiet
                )
                chaos = run_once("chaos", *common, faults, args.seed, Path(tmp), quiet)
                base = future.result()
        else:
            base = run_once("fault-free", *common, None, args.seed, Path(tmp), quiet)
            chaos = run_once("chaos", *common, faults, args.seed, Path(tmp), quiet)
    comp = compare(base, chaos)
    print_report(base, chaos, comp, len(events))
    return 0 if not comp.failures else 1


if __name__ == "__main__":
    sys.exit(main())
