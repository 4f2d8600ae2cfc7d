"""The whole API built from the environment: what `loyalty serve` runs, in each of its worker processes.

uvicorn calls `create_app_from_env` (by the import string `FACTORY`) once per worker. `loyalty serve` has
already checked the database and the rules and exported every setting as a LOYALTY_* variable, so each
worker builds the same application: its own engine and pool, its own rules watcher, the same bounds.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from fastapi import FastAPI
from sqlalchemy import Engine
from uvicorn.config import STARTUP_FAILURE

from api.app import create_app
from api.limits import KEY_CACHE_SECONDS, ServeSettings
from engine.errors import RuleFileError
from rules import shipped_rules_dir
from service.errors import SettingError
from service.rules_watcher import RulesWatcher
from service.database import API, database_url, make_engine

FACTORY = "api.factory:create_app_from_env"
RULES_ENV = "LOYALTY_RULES"
log = logging.getLogger("loyalty.api")


def rules_location() -> Path:
    """Where the rules are: $LOYALTY_RULES, else the programme shipped with the package."""
    return Path(os.environ.get(RULES_ENV) or shipped_rules_dir())


def create_app_from_env() -> FastAPI:
    """The API on $LOYALTY_DATABASE_URL and the rules at $LOYALTY_RULES, with every `serve` setting from its
    LOYALTY_* variable. A bad setting or rules that do not load end the process with one line, and uvicorn's
    exit status for a worker that could not start (which stops `loyalty serve`, rather than restarting it)."""
    try:
        settings = ServeSettings.from_env()
        watcher = RulesWatcher(rules_location(), settings.reload_seconds)
        engine = make_engine(database_url(), API)
    except SettingError as exc:
        _cannot_start(f"{exc}; correct or unset it")
    except RuleFileError as exc:
        _cannot_start(f"the rules at {rules_location()} do not load: {'; '.join(str(p) for p in exc.problems)}")
    app = create_app(engine, watcher.current(), hold=timedelta(seconds=settings.hold_seconds),
                     request_seconds=settings.request_timeout, body_seconds=settings.body_timeout,
                     key_cache_seconds=KEY_CACHE_SECONDS)
    # A new version installed by `loyalty rules activate` replaces the set whole; each request keeps
    # the set it started with.
    watcher.on_install = lambda programmes: setattr(app.state, "programmes", programmes)
    app.state.rules_status = watcher.status
    _while_serving(app, watcher, engine)
    # The rules, their compiled matchers and the app are loaded for good: taking them out of the
    # garbage collector's view keeps its full collections (pauses in the tail latency) short.
    gc.collect()
    gc.freeze()
    return app


def _while_serving(app: FastAPI, watcher: RulesWatcher, engine: Engine) -> None:
    """Watch the rules from the app's start to its shutdown, then close the database pool."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[object]:
        watcher.start()
        try:
            async with inner(application) as state:
                yield state
        finally:
            await asyncio.to_thread(watcher.stop)  # it may be half-way through a trial of a new file
            engine.dispose()

    app.router.lifespan_context = lifespan


def _cannot_start(reason: str) -> NoReturn:
    log.error("this server process cannot start: %s", reason)
    raise SystemExit(STARTUP_FAILURE)
