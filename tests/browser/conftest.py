"""Browser tests of the console: the whole local stack plus the console, driven by a real
headless Chromium (Debian's `chromium`) through Playwright.

They run only when asked (`CLM_BROWSER_TESTS=1`, which `make test-browser` sets), so
`make test` needs no browser. Asked and no Chromium found is an error, not a skip.
`CLM_CHROMIUM` names the browser executable (default: `chromium` on the PATH).
`CLM_CONSOLE_SCREENSHOTS` names a folder for the page screenshots (the docs use
docs/console); without it they go to a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from browserkit import Console
from kit import make_key

from clm_devstack import procs
from clm_devstack.stack import SERVICES, Stack

ENABLED = os.environ.get("CLM_BROWSER_TESTS") == "1"
if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


def chromium_path() -> str:
    path = os.environ.get("CLM_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise pytest.UsageError(
            "browser tests need Chromium: apt-get install chromium, or set CLM_CHROMIUM"
        )
    return path


@pytest.fixture(scope="session")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """PostgreSQL, the broker, the four services (as `make run` starts them) and the
    console, on free ports."""
    data = tmp_path_factory.mktemp("stack")
    stack = Stack(
        data_dir=data,
        pg_port=procs.free_port(),
        kafka_port=procs.free_port(),
        # The four services; the console is started below, pointed at them.
        services=tuple(replace(s, port=procs.free_port()) for s in SERVICES if s.name != "console"),
    )
    console = None
    try:
        stack.start_infrastructure()
        stack.prepare()
        stack.start_services()
        urls = {s.name: s.url for s in stack.services}
        port = procs.free_port()
        console = procs.spawn(
            [str(Path(sys.executable).with_name("clm-console")), "serve"],
            env={
                **stack.env(),
                "CLM_CONSOLE_PORT": str(port),
                **{f"CLM_CONSOLE_{n.upper().replace('-', '_')}_URL": u for n, u in urls.items()},
            },
            log_path=stack.log_dir / "console.log",
        )
        procs.wait_for_port("127.0.0.1", port, timeout=30, proc=console)
        assert stack.database_url and stack.bootstrap_servers
        keys = [
            asyncio.run(make_key(stack.database_url, role, source))
            for role, source in (("admin", None), ("read", None), ("source", "shop"))
        ]
        shots = os.environ.get("CLM_CONSOLE_SCREENSHOTS")
        folder = Path(shots) if shots else tmp_path_factory.mktemp("screenshots")
        folder.mkdir(parents=True, exist_ok=True)
        yield Console(
            f"http://127.0.0.1:{port}",
            urls["ingest"],
            stack.database_url,
            stack.bootstrap_servers,
            *keys,
            folder,
        )
    finally:
        if console is not None:
            procs.stop(console, timeout=10)
        stack.stop()


# Per module: sync Playwright runs an event loop in this thread while it is open, which
# async tests collected in the same session must not meet.
@pytest.fixture(scope="module")
def browser(console_stack: Console) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: object, console_stack: Console) -> Iterator[object]:
    """A fresh tab (its own sessionStorage: nobody signed in) at a desktop size."""
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    expect.set_options(timeout=15_000)  # the machine may be busy with other work
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=console_stack.url
    )
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield tab
    context.close()
    assert errors == [], errors  # no script errors, nothing blocked by the CSP
