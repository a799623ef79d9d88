"""The demo app's replicas behind a round-robin balancer, restarted one at a time.

A deploy in the drill is what it is in production: each replica in turn is taken out of
the balancer, stopped (uvicorn finishes the requests it holds), started with the new
configuration on the same port, and put back once its /healthz answers. The balancer
never sends to a replica that is down, so a deploy by itself fails no request.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from poolwarden.drill._demo_process import free_port
from poolwarden.drill.demoapp import AppConfig, AppProcess
from poolwarden.watch.observation import TargetInfo


class Fleet:
    """`replicas` processes of the demo app, each on its own fixed loopback port."""

    def __init__(self, config: AppConfig, replicas: int, log_dir: Path, database: str) -> None:
        self.config = dataclasses.replace(config, replicas=replicas)
        self.database = database
        self._ports = [free_port() for _ in range(replicas)]
        self._logs = [log_dir / f"{config.name}-{i}.log" for i in range(replicas)]
        self._procs: list[AppProcess | None] = [None] * replicas
        self._up: list[bool] = [False] * replicas
        self._lock = threading.Lock()
        self._turn = itertools.count()

    @property
    def size(self) -> int:
        """Return the number of replicas."""
        return len(self._ports)

    def names(self) -> list[str]:
        """Return each replica's target name (``orders-api-0``...)."""
        return [f"{self.config.name}-{i}" for i in range(self.size)]

    def targets(self) -> list[TargetInfo]:
        """Return the replicas as watch targets (their /metrics on loopback)."""
        return [
            TargetInfo(name, f"http://127.0.0.1:{port}/metrics", self.database)
            for name, port in zip(self.names(), self._ports, strict=True)
        ]

    def pick(self) -> str | None:
        """Return the base URL of the next replica in the balancer, None when none is up."""
        with self._lock:
            up = [i for i, ok in enumerate(self._up) if ok]
        if not up:
            return None
        return f"http://127.0.0.1:{self._ports[up[next(self._turn) % len(up)]]}"

    def start(self) -> None:
        """Start every replica at once; return when all answer."""
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(self._start, range(self.size)))

    def deploy(
        self,
        on_replica: Callable[[str], None] = lambda name: None,
        *,
        startup_s: float = 0.0,
        **changes: Any,
    ) -> None:
        """Roll out `changes` to the configuration, one replica at a time.

        `startup_s` is the new version's start-up time between the old process going and
        the new one opening its pool (a JVM warming up, caches loading): the slots the old
        one freed are up for grabs meanwhile, as in a real rollout.
        """
        self.config = dataclasses.replace(self.config, **changes)
        for i, name in enumerate(self.names()):
            with self._lock:
                self._up[i] = False
            self._stop(i)
            time.sleep(startup_s)
            self._start(i)
            on_replica(name)

    def set_fault(self, kind: str, **params: Any) -> None:
        """Switch an app-side bug on (or off, with ``"none"``) in every replica."""
        for proc in self._procs:
            if proc is not None:
                proc.set_fault(kind, **params)

    def stop(self) -> None:
        """Stop every replica (idempotent)."""
        with self._lock:
            self._up = [False] * self.size
        for i in range(self.size):
            self._stop(i)

    def _start(self, i: int) -> None:
        proc = AppProcess.start(self.config, port=self._ports[i], log_path=self._logs[i])
        with self._lock:
            self._procs[i] = proc
            self._up[i] = True

    def _stop(self, i: int) -> None:
        proc, self._procs[i] = self._procs[i], None
        if proc is not None:
            proc.stop()
