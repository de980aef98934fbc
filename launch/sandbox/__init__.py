"""Sandbox EHR: a standalone fake SMART-on-FHIR EHR (authorization server + FHIR R4 API + launcher).

It is the other side of the wire for the app and the tests and imports nothing from
``smart_app``, ``rag`` or ``fhir_adapters``. See ``docs/contracts.md`` § "Sandbox EHR".
"""

from __future__ import annotations

from launch.sandbox.app import create_sandbox_app
from launch.sandbox.client_jwks import JwksFetcher
from launch.sandbox.config import SandboxClient, SandboxConfig
from launch.sandbox.faults import Fault, FaultInjector, FaultPlan
from launch.sandbox.loader import load_fhir_dir
from launch.sandbox.store import SandboxStore
from launch.sandbox.synthetic import generate_patients

__all__ = [
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "JwksFetcher",
    "SandboxClient",
    "SandboxConfig",
    "SandboxStore",
    "create_sandbox_app",
    "generate_patients",
    "load_fhir_dir",
]
