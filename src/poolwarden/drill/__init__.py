"""The drill: replay an outage on a real PostgreSQL under open-loop load (`open_loop`)."""

from __future__ import annotations

from poolwarden.drill.load import LoadResult, LoadSecond, open_loop

__all__ = [
    "LoadResult",
    "LoadSecond",
    "open_loop",
]
