"""Which EHR a launch, session or row belongs to: the stable source key of a FHIR base (``iss``).

A patient is (EHR source, patient id) everywhere (DESIGN.md § Storage). The key is derived from the
normalised ``iss`` so that it is the same for every worker and survives restarts.
"""

from __future__ import annotations

import hashlib


def normalise_iss(iss: str) -> str:
    """``iss`` as compared and stored: no trailing slash."""
    return iss.rstrip("/")


def source_key(iss: str) -> str:
    """The stable key of an EHR's FHIR base (``ehr-`` and 12 hex digits of its SHA-256)."""
    return "ehr-" + hashlib.sha256(normalise_iss(iss).encode()).hexdigest()[:12]
