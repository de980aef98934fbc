"""The SMART app: launch/callback, sessions, scope grammar, API routers, sync jobs and audit."""

from fastapi import FastAPI
from starlette.routing import Route

from smart_app import http_errors, openapi
from smart_app.audit import AuditRecord, ChainReport, verify_chain
from smart_app.crypto import TokenCipher, new_key_b64
from smart_app.jobs import SyncJobs
from smart_app.mcp_server import McpEndpoint
from smart_app.oauth import ClientConfig, SmartClient
from smart_app.repository import append_audit, iter_audit
from smart_app.routes_agents import router as agents_router
from smart_app.routes_agents import well_known as agents_well_known
from smart_app.routes_api import health
from smart_app.routes_api import router as api_router
from smart_app.routes_launch import router as launch_router
from smart_app.routes_web import router as web_router
from smart_app.scopes import GrantedScopes
from smart_app.state import AppConfig, AppState


def install_routes(app: FastAPI) -> None:
    """Add chartcite's routers and error handlers to an app built by ``launch``."""
    http_errors.install(app)
    openapi.install(app)
    app.include_router(health)
    app.include_router(launch_router)
    app.include_router(api_router)
    app.include_router(web_router)
    app.include_router(agents_router)
    app.include_router(agents_well_known)


def install_mcp(app: FastAPI, base_url: str) -> McpEndpoint:
    """Serve the MCP endpoint at ``/mcp``; the app's lifespan must run ``endpoint.running()``."""
    endpoint = McpEndpoint(base_url)
    endpoint.route = Route("/mcp", endpoint)
    app.router.routes.append(endpoint.route)
    return endpoint


__all__ = [
    "AppConfig",
    "AppState",
    "AuditRecord",
    "ChainReport",
    "ClientConfig",
    "GrantedScopes",
    "McpEndpoint",
    "SmartClient",
    "SyncJobs",
    "TokenCipher",
    "append_audit",
    "install_mcp",
    "install_routes",
    "iter_audit",
    "new_key_b64",
    "verify_chain",
]
