"""`poolwarden audit`: check a topology's connection settings; text, JSON or Markdown.

Exit codes: 0 no error finding (warnings allowed), 1 at least one error finding, 2 bad
input (a `PoolwardenError`, which the CLI prints as one line).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError
from poolwarden.plan.audit import AuditFinding, audit, read_live_settings
from poolwarden.plan.topology import load_topology

__all__ = ["register", "render_markdown", "render_text"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_HEADING = {"error": "Errors", "warning": "Warnings", "info": "Notes"}


def register(app: typer.Typer) -> None:
    """Add the `audit` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "audit" for command in app.registered_commands):
        app.command("audit")(audit_cmd)


def audit_cmd(
    topology: Annotated[Path, typer.Argument(metavar="TOPOLOGY", help="The topology YAML.")],
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="Read the server's settings live from this DSN.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    format_: Annotated[
        str, typer.Option("--format", help="Output format: text or md (Markdown).")
    ] = "text",
) -> int:
    """Check every connection setting in the stack against the others."""
    if format_ not in ("text", "md"):
        raise ConfigError(f"--format {format_!r}: use text or md")
    spec = load_topology(topology, dsn=dsn)
    server, bouncer = read_live_settings(spec)
    findings = audit(spec, server, bouncer)
    if json_:
        doc = {
            "topology": str(topology),
            "settings_source": server.source,
            "findings": [dataclasses.asdict(f) for f in findings],
        }
        print(redact_dsn(json.dumps(doc, indent=2)))
    elif format_ == "md":
        print(render_markdown(findings, str(topology)), end="")
    else:
        render_text(findings, str(topology), Console(highlight=False, soft_wrap=True))
    return 1 if any(f.severity == "error" for f in findings) else 0


def render_text(findings: list[AuditFinding], source: str, console: Console) -> None:
    """Print `findings` grouped by severity, each with its evidence, why and fix."""
    counts = {s: sum(f.severity == s for f in findings) for s in _HEADING}
    console.print(
        f"{source}: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes",
        style="bold",
    )
    for severity, heading in _HEADING.items():
        group = [f for f in findings if f.severity == severity]
        if group:
            console.print(f"\n{heading}", style=_STYLE[severity])
        for f in group:
            console.print(f"  [{f.code}] {f.title}", style=_STYLE[severity], markup=False)
            console.print(f"    evidence: {_evidence(f)}", markup=False)
            console.print(f"    why: {f.why}", markup=False)
            console.print(f"    fix: {f.fix}", markup=False)


def render_markdown(findings: list[AuditFinding], source: str) -> str:
    """Return `findings` as a Markdown report, one section per severity."""
    lines = [f"# Audit of `{source}`", ""]
    if not findings:
        lines += ["No findings.", ""]
    for severity, heading in _HEADING.items():
        group = [f for f in findings if f.severity == severity]
        if group:
            lines += [f"## {heading}", ""]
        for f in group:
            lines += [
                f"### `{f.code}`: {f.title}", "",
                f"- **Evidence**: {_evidence(f)}", f"- **Why**: {f.why}", f"- **Fix**: {f.fix}", "",
            ]  # fmt: skip
    return "\n".join(lines)


def _evidence(finding: AuditFinding) -> str:
    return ", ".join(f"{k}={v}" for k, v in finding.evidence.items())
