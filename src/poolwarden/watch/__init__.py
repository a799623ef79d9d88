"""The monitor: time-series windows, rules, diagnosis, incidents and notifications.

`SeriesStore` keeps the recent samples the watch loop gathers and answers the PromQL
functions the rules need (docs/watch-series.md). `watch` prints nothing.
"""

from __future__ import annotations

from poolwarden.watch.series import LabelSet, SeriesStats, SeriesStore, seconds_to_exhaustion

__all__: list[str] = ["LabelSet", "SeriesStats", "SeriesStore", "seconds_to_exhaustion"]
