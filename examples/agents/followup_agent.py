"""Agent 2: reads the summary agent's latest event, checks a resource it cites, asks a follow-up
and records a ``follow_up`` event that points back at the summary.

    python examples/agents/followup_agent.py --base-url http://127.0.0.1:8000 [--patient ID]
"""

from __future__ import annotations

import asyncio
import sys

from chartcite_agent import arguments, call, connect, report, setup

FOLLOW_UP = "Which allergies and active problems does the patient have?"


async def main() -> None:
    base, token = setup(arguments(__doc__ or ""))
    async with connect(base, token) as client:
        found = await call(
            client, "list_events", {"agent": "summary-agent", "type": "summary", "limit": 1}
        )
        if not found["events"]:
            sys.exit("no summary event yet: run summary_agent.py first")
        summary = found["events"][-1]
        cited = sorted(r for r in summary["refs"] if r.startswith("Observation/"))
        checked = None
        if cited:
            rtype, rid = cited[0].split("/", 1)
            read = await call(client, "read_resource", {"resource_type": rtype, "resource_id": rid})
            checked = read["reference"]
        answer = await call(client, "ask", {"question": FOLLOW_UP})
        event = await call(
            client,
            "record_event",
            {
                "agent": "followup-agent",
                "type": "follow_up",
                "answer_ids": [answer["answer_id"]],
                "refs": [checked] if checked else [],
                "payload": {
                    "text": "Follow-up on the summary: allergies and active problems.",
                    "follows_event": summary["id"],
                    "statements": [
                        {"text": s["text"], "citations": s["citations"]}
                        for s in answer["statements"][:10]
                    ],
                },
            },
        )
    report(
        {
            "agent": "followup-agent",
            "read_summary": summary["id"],
            "checked": checked,
            "answer_id": answer["answer_id"],
            "event_id": event["id"],
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
