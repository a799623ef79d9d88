"""Review what happened: the postmortem of an incident that watch recorded.

`render_postmortem` writes an incident's postmortem as Markdown in four sections (Issue
Summary, Timeline, Root Cause and Resolution, Corrective and Preventative Measures);
`postmortem_json` gives the same content as JSON values; `action_items` derives the typed
tasks from the root cause (docs/postmortem.md).
"""

from __future__ import annotations

from poolwarden.review.postmortem import (
    ACTION_TYPES,
    SECTIONS,
    ActionItem,
    action_items,
    postmortem_json,
    render_postmortem,
)

__all__ = [
    "ACTION_TYPES",
    "ActionItem",
    "SECTIONS",
    "action_items",
    "postmortem_json",
    "render_postmortem",
]
