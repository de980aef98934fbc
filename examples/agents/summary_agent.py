"""Agent 1: asks chartcite for a cited summary and records it as a ``summary`` event.

python examples/agents/summary_agent.py --base-url http://127.0.0.1:8000 [--patient ID]
"""

from __future__ import annotations

import asyncio

from chartcite_agent import arguments, call, connect, report, setup

QUESTION = "What was this patient's HbA1c trend, and which medications were prescribed?"


async def main() -> None:
    base, token = setup(arguments(__doc__ or ""))
    async with connect(base, token) as client:
        answer = await call(client, "ask", {"question": QUESTION})
        labs = await call(client, "list_facts", {"kind": "labs", "codes": ["4548-4"]})
        latest = labs["facts"][-1] if labs["facts"] else None
        statements = [
            {"text": s["text"], "citations": s["citations"]} for s in answer["statements"][:10]
        ]
        event = await call(
            client,
            "record_event",
            {
                "agent": "summary-agent",
                "type": "summary",
                "answer_ids": [answer["answer_id"]],
                "refs": [latest["reference"]] if latest else [],
                "payload": {
                    "text": f"Summary for the care team ({len(statements)} cited statements).",
                    "statements": statements,
                    "question": QUESTION,
                },
            },
        )
    report(
        {
            "agent": "summary-agent",
            "answer_id": answer["answer_id"],
            "event_id": event["id"],
            "refs": event["refs"],
            "statements": len(statements),
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
