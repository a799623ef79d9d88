"""Alertmanager's alert fingerprint, shared by the rule engine and the notifiers."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["alert_fingerprint"]

# Alertmanager's fingerprint is 64-bit FNV-1a over sorted "name 0xff value 0xff" pairs.
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def alert_fingerprint(labels: Mapping[str, str]) -> str:
    """Return the 16-hex-digit fingerprint Alertmanager gives an alert with `labels`."""
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{digest:016x}"
