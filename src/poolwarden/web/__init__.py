"""The dashboard of ``poolwarden watch --web``; reference: docs/dashboard.md.

The app itself is `poolwarden.web.app.create_app`, which needs the ``asgi`` extra
(``pip install 'poolwarden[asgi]'``: Starlette and uvicorn), so this package re-exports
only what works without it: the state document, the pool series and the collector.
"""

from __future__ import annotations

from poolwarden.web._metrics import WatchCollector
from poolwarden.web._state import (
    POOL_COUNT,
    POOL_PENDING,
    POOL_WAIT_P95,
    incident_json,
    record_dashboard,
    state_json,
)

__all__ = [
    "POOL_COUNT",
    "POOL_PENDING",
    "POOL_WAIT_P95",
    "WatchCollector",
    "incident_json",
    "record_dashboard",
    "state_json",
]
