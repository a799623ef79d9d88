"""The entry point of one demo-app replica: ``python -m poolwarden.drill._demo_main --port N``.

Nothing imports this module, so ``runpy`` runs it exactly once (running ``demoapp``
itself with ``-m`` would import it twice: the package imports it first).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from poolwarden._dsn import redact_dsn
from poolwarden.drill.demoapp import ENV_VAR, AppConfig, create_app
from poolwarden.errors import ConfigError


class _RedactingFormatter(logging.Formatter):
    """Format records with any DSN password masked: the log file outlives the drill."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_dsn(super().format(record))


def main(argv: list[str] | None = None) -> int:
    """Run one replica: the config from ``POOLWARDEN_DEMOAPP``, the port from ``--port``."""
    parser = argparse.ArgumentParser(
        prog="python -m poolwarden.drill._demo_main",
        description=f"Serve the drill's orders API; the config JSON comes from ${ENV_VAR}.",
    )
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        config = AppConfig.from_json(os.environ.get(ENV_VAR) or "")
    except ConfigError as exc:
        print(f"{exc}; set {ENV_VAR} to AppConfig.to_json()", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    uvicorn.run(
        create_app(config), host="127.0.0.1", port=args.port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=2,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
