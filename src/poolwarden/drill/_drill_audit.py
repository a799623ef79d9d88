"""The audit of the fleet as it ran during the fault: findings become postmortem tasks.

`audit_fleet` writes the fleet the fault left (services, pools, the other clients) as
``topology.yaml`` in the run's directory - without the DSN, so ``poolwarden audit
topology.yaml --dsn ...`` reproduces it - and audits it against the live server's settings
(`poolwarden.plan.audit`). The runner records each error and warning as a note on the
incident; the postmortem lists them under Corrective and Preventative Measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from poolwarden.drill.demoapp import AppConfig
from poolwarden.plan.audit import AuditFinding, audit, read_live_settings
from poolwarden.plan.topology import Topology


def fleet_topology(config: AppConfig, replicas: int, neighbours: int) -> dict[str, Any]:
    """Return the topology (YAML-ready) of `replicas` x the app and the other clients."""
    service: dict[str, Any] = {
        "name": config.name, "replicas": replicas, "library": "psycopg",
        "pool": {"min_size": config.pool_min, "max_size": config.pool_max,
                 "timeout": config.pool_timeout, "max_lifetime": config.pool_max_lifetime},
        "request_timeout": 5.0,
    }  # fmt: skip
    if config.guard:
        service["guard"] = {"timeout": config.guard_timeout}
    others = [{"name": "billing-worker", "connections": neighbours}] if neighbours else []
    return {"services": [service], "other_clients": others}


def audit_fleet(
    config: AppConfig, replicas: int, neighbours: int, admin_dsn: str, out_dir: Path
) -> list[AuditFinding]:
    """Write ``topology.yaml`` and return the audit's errors and warnings for it."""
    data = fleet_topology(config, replicas, neighbours)
    (out_dir / "topology.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    spec = Topology.model_validate({**data, "server": {"dsn": admin_dsn}})
    server, bouncer = read_live_settings(spec)
    return [f for f in audit(spec, server, bouncer) if f.severity in ("error", "warning")]
