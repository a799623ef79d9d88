"""Review what happened: the postmortem of an incident that watch recorded.

`render_postmortem` writes an incident's postmortem as Markdown in four sections (Issue
Summary, Timeline, Root Cause and Resolution, Corrective and Preventative Measures);
`postmortem_json` gives the same content as JSON values; `action_items` derives the typed
tasks from the root cause; `incident_impact` reads the impact from notes and samples, and
`write_charts` draws connections, errors and latency as PNGs (docs/postmortem.md).
"""

from __future__ import annotations

from poolwarden.review.charts import CHART_FILES, write_charts
from poolwarden.review.impact import IMPACT_MARGIN_S, Impact, incident_impact, incident_window
from poolwarden.review.postmortem import (
    ACTION_TYPES,
    SECTIONS,
    ActionItem,
    action_items,
    incident_action_items,
    postmortem_json,
    render_postmortem,
)

__all__ = [
    "ACTION_TYPES",
    "ActionItem",
    "CHART_FILES",
    "IMPACT_MARGIN_S",
    "Impact",
    "SECTIONS",
    "action_items",
    "incident_action_items",
    "incident_impact",
    "incident_window",
    "postmortem_json",
    "render_postmortem",
    "write_charts",
]
