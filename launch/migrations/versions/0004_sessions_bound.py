"""Sessions bound to the launch and the browser; bearer-token principals.

- ``launch_state.browser_hash``: SHA-256 of the pre-auth cookie of the browser that started the
  launch; the callback is refused in any other browser (login CSRF).
- ``app_session.kind``: ``launch`` (a clinician's SMART launch) or ``bearer`` (an app presenting its
  own EHR token; ``id_hash`` is then the token's SHA-256 and the row lives until the token's exp).
- ``app_session.launch_context``: what the launch said besides the patient (``intent``, ``tenant``,
  ``fhirContext``), exposed at ``GET /api/context``.
- ``app_session.checked_at``: when the EHR token was last known to be alive (introspection).

Open sessions were issued as browser-wide cookies, which no longer authenticate: they are dropped
(the clinician launches again).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"

STATEMENTS = [
    "DELETE FROM app_session",
    "DELETE FROM launch_state",
    "ALTER TABLE launch_state ADD COLUMN browser_hash text NOT NULL",
    "ALTER TABLE app_session ADD COLUMN kind text NOT NULL DEFAULT 'launch'",
    "ALTER TABLE app_session ADD COLUMN launch_context jsonb NOT NULL DEFAULT '{}'::jsonb",
    "ALTER TABLE app_session ADD COLUMN checked_at timestamptz",
    "CREATE INDEX app_session_expires ON app_session (expires_at)",
]


def upgrade() -> None:
    bind = op.get_bind()
    for statement in STATEMENTS:
        bind.exec_driver_sql(statement)
