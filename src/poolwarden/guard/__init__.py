"""Runtime protection inside the application: admission control and limit algorithms."""

from __future__ import annotations

from poolwarden.guard._waiting import Admission, AsyncAdmission
from poolwarden.guard.admission import (
    AdmissionConfig,
    AdmissionCore,
    AdmissionDecision,
    AdmissionStats,
    Admit,
    Enqueue,
    Reject,
    RejectReason,
    Wake,
)
from poolwarden.guard.limits import AIMDLimit, ConcurrencyLimit, FixedLimit, Gradient2Limit

__all__ = [
    "AIMDLimit",
    "Admission",
    "AdmissionConfig",
    "AdmissionCore",
    "AdmissionDecision",
    "AdmissionStats",
    "Admit",
    "AsyncAdmission",
    "ConcurrencyLimit",
    "Enqueue",
    "FixedLimit",
    "Gradient2Limit",
    "Reject",
    "RejectReason",
    "Wake",
]
