"""The framework floor `bench/api.py` measures the API against: a minimal FastAPI app on uvicorn (its defaults)
answering the benefits route and /healthz with fixed JSON bodies as large as the server's own answers. No key,
no database, no middleware: what any FastAPI service pays per request.

    BENCH_FLOOR_BODIES=bodies.json python -m uvicorn bench.floor_app:create_app --factory --port 8081

`bodies.json` holds {"benefits": "<a benefits answer>", "healthz": "<a /healthz answer>"}.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI, Response

BODIES_ENV = "BENCH_FLOOR_BODIES"


def create_app() -> FastAPI:
    """The floor app, answering with the bodies in the file $BENCH_FLOOR_BODIES names."""
    bodies = {path: body.encode() for path, body in json.loads(Path(os.environ[BODIES_ENV]).read_text()).items()}
    app = FastAPI()

    @app.get("/v1/clients/{client_id}/benefits")
    async def benefits(client_id: str) -> Response:
        return Response(bodies["benefits"], media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(bodies["healthz"], media_type="application/json")

    return app
