"""``chartcite eval``: score chartcite's answers against a JSONL question set, per question kind.

``--generate OUT`` writes the set (``launch.eval_questions``); ``--questions FILE`` loads the charts
the file names into a scratch embedded PostgreSQL through the import pipeline (raw → facts →
index), asks every question through ``rag.answer_question`` with the line's fixed clock, and
reports citation precision and recall, correctness, "nothing found" accuracy, uncited statements,
foreign-patient citations and latency. It is a report: exit 0, or 2 when the file is malformed.
Only question text and resource ids are printed, never a value from a chart.

``--mode llm`` asks through the whole LLM path (``rag.llm``: PHI tokenization, the real Anthropic
SDK, citation validation) against the fake Messages API (``launch/sandbox/anthropic_fake.py``) on
loopback: ``--fake faithful`` answers from the numbered evidence, ``--fake adversarial`` cycles
through never-retrieved, other-patient, out-of-scope and uncited citations, mangled placeholders
and a mix. Besides the usual scores it reports removed statements, fallbacks, and the number of
the patient's known identifiers found in the recorded outbound requests (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from launch.eval_charts import Chart, sandbox_charts, synthea_charts
from launch.eval_questions import (
    PHRASINGS,
    SLOTS,
    EvalDataError,
    generate_questions,
    load_phrasings,
    load_slots,
    read_jsonl,
)

SYNTHEA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea"
_FIELDS = {
    "qid",
    "kind",
    "split",
    "source",
    "iss",
    "chart",
    "patient",
    "question",
    "now",
    "expected",
}


# -- scoring (pure) ------------------------------------------------------------------------------


@dataclass
class Score:
    qid: str
    kind: str
    question: str
    none: bool
    cited: list[str] = field(default_factory=list)
    precision: float | None = None
    recall: float | None = None
    correct: bool = False
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    values_missing: int = 0
    uncited: int = 0
    foreign: list[str] = field(default_factory=list)
    facts: int = 0
    notices: int = 0
    latency_ms: float = 0.0
    error: str | None = None


def value_in(value: str, text: str) -> bool:
    """``value`` appears in ``text`` as a whole token (``7.2`` not inside ``17.25``; ``5`` ≈ ``5.0``)."""
    pattern = rf"(?<![\w.]){re.escape(value.lower())}(?:\.0+)?(?![\w]|\.\d)"
    return re.search(pattern, text.lower()) is not None


def score_answer(q: dict[str, Any], body: Any, foreign: list[str] | None = None) -> Score:
    """One answer (an ``AnswerBody``) against one question line's ``expected``."""
    exp = q["expected"]
    required, allowed = set(exp["required"]), set(exp["allowed"])
    facts = [s for s in body.statements if s.kind == "fact"]
    notices = [s for s in body.statements if s.kind == "notice"]
    cited = sorted({c for s in facts for c in s.citations})
    s = Score(q["qid"], q["kind"], q["question"], bool(exp["none"]), cited=cited)
    s.facts, s.notices = len(facts), len(notices)
    s.latency_ms = float(body.latency_ms)
    s.uncited = sum(
        1 for st in facts if not st.citations or any(c not in body.citations for c in st.citations)
    )
    s.foreign = sorted(foreign or [])
    ok = required | allowed
    if cited:
        s.precision = len(set(cited) & ok) / len(cited)
    if required:
        s.recall = len(set(cited) & required) / len(required)
    s.missing = sorted(required - set(cited))
    s.extra = sorted(set(cited) - ok)
    text = " ".join(st.text for st in facts)
    s.values_missing = sum(1 for v in exp["values"] if not value_in(str(v), text))
    if s.none:
        s.correct = not facts and bool(notices)
    else:
        s.correct = not s.missing and not s.extra and not s.values_missing and bool(facts)
    s.correct = s.correct and not s.uncited and not s.foreign
    return s


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(scores: list[Score]) -> dict[str, Any]:
    """The report's numbers for a group of scored questions."""
    nones = [s for s in scores if s.none]
    lat = [s.latency_ms for s in scores if s.error is None]
    return {
        "n": len(scores),
        "precision": _mean([s.precision for s in scores if s.precision is not None]),
        "recall": _mean([s.recall for s in scores if s.recall is not None]),
        "correct": _mean([float(s.correct) for s in scores]),
        "none_n": len(nones),
        "none_accuracy": _mean([float(s.correct) for s in nones]),
        "uncited": sum(s.uncited for s in scores),
        "foreign": sum(len(s.foreign) for s in scores),
        "errors": sum(1 for s in scores if s.error),
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
    }


def _f(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.1f}"


def report(scores: list[Score], *, worst: int = 10) -> str:
    """The per-kind table, the overall line and the worst failures (question text and ids only)."""
    head = f"{'kind':<22}{'n':>4}{'prec':>6}{'rec':>6}{'correct':>8}{'none ok':>9}{'uncited':>8}{'foreign':>8}{'p50 ms':>8}{'p95 ms':>8}"
    lines = [head, "-" * len(head)]

    def row(name: str, m: dict[str, Any]) -> str:
        none = f"{_f(m['none_accuracy'])}/{m['none_n']}" if m["none_n"] else "-"
        return (
            f"{name:<22}{m['n']:>4}{_f(m['precision']):>6}{_f(m['recall']):>6}{_f(m['correct']):>8}"
            f"{none:>9}{m['uncited']:>8}{m['foreign']:>8}{_f(m['p50_ms'], False):>8}{_f(m['p95_ms'], False):>8}"
        )

    for kind in sorted({s.kind for s in scores}):
        lines.append(row(kind, summarise([s for s in scores if s.kind == kind])))
    lines.append("-" * len(head))
    overall = summarise(scores)
    lines.append(row("overall", overall))
    if overall["errors"]:
        lines.append(f"{overall['errors']} questions raised an error (scored as wrong)")
    failed = [s for s in scores if not s.correct]
    failed.sort(
        key=lambda s: (s.recall if s.recall is not None else 0.0, s.precision or 0.0, s.qid)
    )
    if failed:
        lines.append(f"\nworst failures ({min(worst, len(failed))} of {len(failed)}):")
    for s in failed[:worst]:
        why = []
        if s.error:
            why.append(f"error {s.error}")
        if s.none and s.facts:
            why.append(f"expected nothing found, got {s.facts} fact statements")
        if s.none and not s.notices:
            why.append("no notice")
        if not s.none and not s.facts:
            why.append("no fact statement")
        if s.missing:
            why.append(
                f"missing {len(s.missing)} [{', '.join(s.missing[:3])}{', …' if len(s.missing) > 3 else ''}]"
            )
        if s.extra:
            why.append(
                f"extra {len(s.extra)} [{', '.join(s.extra[:3])}{', …' if len(s.extra) > 3 else ''}]"
            )
        if s.values_missing:
            why.append(f"{s.values_missing} expected values not in the text")
        if s.uncited:
            why.append(f"{s.uncited} statements without a valid citation")
        if s.foreign:
            why.append(f"{len(s.foreign)} citations not stored for this patient")
        lines.append(f"  {s.qid:<8} {s.question!r}: {'; '.join(why)}")
    return "\n".join(lines)


# -- the question file ---------------------------------------------------------------------------


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Every line of a question file, checked; ``EvalDataError`` names the first bad line."""
    try:
        rows = list(read_jsonl(path))
    except OSError as exc:
        raise EvalDataError(f"{path}: cannot read ({exc.strerror})") from None
    out = []
    for n, q in rows:
        if not _FIELDS <= q.keys():
            missing = sorted(_FIELDS - q.keys())
            raise EvalDataError(f"{path.name} line {n}: missing fields {missing}")
        exp = q["expected"]
        if not isinstance(exp, dict) or not {"required", "allowed", "values", "none"} <= exp.keys():
            raise EvalDataError(
                f"{path.name} line {n}: expected needs required, allowed, values, none"
            )
        if q["split"] not in ("public", "heldout") or not isinstance(q["chart"], dict):
            raise EvalDataError(f"{path.name} line {n}: bad split or chart")
        try:
            q["_now"] = datetime.fromisoformat(q["now"])
        except (TypeError, ValueError):
            raise EvalDataError(f"{path.name} line {n}: now is not an ISO datetime") from None
        out.append(q)
    if not out:
        raise EvalDataError(f"{path.name}: no questions")
    return out


def _charts_for(
    questions: list[dict[str, Any]], synthea: Path | None
) -> tuple[list[Chart], list[str]]:
    """Rebuild the charts the questions name; the reasons for any that cannot be rebuilt."""
    charts: list[Chart] = []
    skipped: list[str] = []
    for origin_text in sorted({json.dumps(q["chart"], sort_keys=True) for q in questions}):
        origin = json.loads(origin_text)
        if origin.get("generator") == "sandbox":
            built = sandbox_charts(
                int(origin["patients"]), int(origin["seed"]), date.fromisoformat(origin["today"])
            )
        elif origin.get("generator") == "synthea":
            if synthea is None or not synthea.is_dir():
                skipped.append(f"the Synthea sample is not at {synthea} (use --synthea DIR)")
                continue
            built = synthea_charts(synthea)
        else:
            raise EvalDataError(f"unknown chart generator {origin.get('generator')!r}")
        wanted = {q["patient"]: q.get("chart_digest") for q in questions if q["chart"] == origin}
        charts += [c for c in built if c.patient_id in wanted]
        lost = wanted.keys() - {c.patient_id for c in built}
        if lost:
            raise EvalDataError(f"{len(lost)} patients of {origin} are not in the rebuilt charts")
        changed = [c for c in built if wanted.get(c.patient_id) not in (None, c.digest)]
        if changed:
            skipped.append(
                f"warning: {len(changed)} {origin['generator']} charts differ from the ones the "
                "questions were made on (the generator changed?): regenerate with --generate"
            )
    return charts, skipped


async def _load(database: Any, settings: Any, charts: list[Chart], work: Path) -> None:
    from launch.importer import import_path

    for n, iss in enumerate(sorted({c.iss for c in charts})):
        folder = work / f"charts-{n}"
        folder.mkdir()
        seen: set[tuple[str, str]] = set()
        with (folder / "charts.ndjson").open("w", encoding="utf-8") as out:
            for chart in (c for c in charts if c.iss == iss):
                for r in chart.resources:
                    if (r["resourceType"], r["id"]) not in seen:
                        seen.add((r["resourceType"], r["id"]))
                        out.write(json.dumps(r) + "\n")
        started = time.perf_counter()
        report = await import_path(database, settings, folder, iss=iss)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
        print(
            f"  {iss}: {report.patients} charts imported ({statuses}) in {time.perf_counter() - started:.0f}s"
        )


@dataclass
class LlmTally:
    """What the LLM path did over the run (``--mode llm``)."""

    fake: str
    answers: int = 0
    llm: int = 0
    gated: int = 0
    calls: int = 0
    removed: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    phi_hits: int = 0
    identifiers: int = 0
    payloads: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def report(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.fallbacks.items())) or "none"
        return (
            f"LLM path (fake: {self.fake}): {self.answers} answers, {self.llm} written by the "
            f"model, {sum(self.fallbacks.values())} extractive fallbacks ({why}), "
            f"{self.gated} not sent (nothing relevant retrieved)\n"
            f"  model calls {self.calls}, statements removed by the validator {self.removed}, "
            f"tokens in/out {self.input_tokens}/{self.output_tokens}, cost ${self.cost_usd:.4f}\n"
            f"  PHI in outbound payloads: {self.phi_hits} occurrences of "
            f"{self.identifiers} known identifiers checked over {self.payloads} requests"
        )


ADVERSARIAL_CYCLE = (
    "unretrieved",
    "foreign",
    "out_of_scope",
    "uncited",
    "unknown_placeholder",
    "mixed",
)


def patient_identifiers(patient: dict[str, Any]) -> set[str]:
    """What identifies a patient in text: name parts, identifier values (MRN, SSN...), birth
    date, phone and email, street address lines and city."""
    found = {str(i["value"]) for i in patient.get("identifier") or [] if i.get("value")}
    for name in patient.get("name") or []:
        found |= {str(p) for p in [name.get("family"), *(name.get("given") or [])] if p}
    found |= {str(t["value"]) for t in patient.get("telecom") or [] if t.get("value")}
    for ad in patient.get("address") or []:
        found |= {str(x) for x in [*(ad.get("line") or []), ad.get("city")] if x}
    if patient.get("birthDate"):
        found.add(str(patient["birthDate"]))
    return {f for f in found if len(f) >= 3}


def phi_count(bodies: list[str], identifiers: set[str]) -> int:
    """Occurrences of any identifier (a whole token, any case) in the request bodies."""
    if not identifiers or not bodies:
        return 0
    alternatives = "|".join(map(re.escape, sorted(identifiers, key=len, reverse=True)))
    pattern = re.compile(r"(?<![\w])(" + alternatives + r")(?![\w])", re.IGNORECASE)
    return sum(len(pattern.findall(b)) for b in bodies)


async def _run(
    questions: list[dict[str, Any]],
    charts: list[Chart],
    work: Path,
    *,
    debug: bool = False,
    llm: LlmTally | None = None,
) -> list[Score]:
    from fhir_adapters import AccessFilter, existing_refs
    from fhir_adapters.normalize import CLINICAL_TYPES, SUPPORT_TYPES
    from launch.db import create_engine, open_database, upgrade_database
    from launch.settings import scratch_settings
    from rag import load_embedder
    from rag.ask import answer_question

    settings = scratch_settings(work, database_url=None)
    database = open_database(settings)
    try:
        await upgrade_database(database)
        started = time.perf_counter()
        await _load(database, settings, charts, work)
        print(
            f"loaded {len(charts)} charts in {time.perf_counter() - started:.1f}s; asking {len(questions)} questions"
        )
        embedder = load_embedder(settings.resolved_model_dir, threads=settings.embed_threads)
        engine = create_engine(database, pool_size=2)
        scores = []
        fake = _LlmRun(charts, llm) if llm is not None else None
        try:
            for n, q in enumerate(questions):
                access = AccessFilter(q["source"], q["patient"], CLINICAL_TYPES | SUPPORT_TYPES)
                try:
                    if fake is not None:
                        access = fake.prepare(n, q, access)
                        body = await fake.answer(engine, embedder, access, q)
                    async with engine.begin() as conn:
                        if fake is None:
                            body = await answer_question(
                                conn, embedder, access, q["question"], now=q["_now"]
                            )
                        cited = {c for s in body.statements for c in s.citations}
                        pairs = [tuple(c.split("/", 1)) for c in cited if "/" in c]
                        stored = await existing_refs(conn, access, pairs)  # type: ignore[arg-type]
                    foreign = sorted(c for c in cited if tuple(c.split("/", 1)) not in stored)
                    scores.append(score_answer(q, body, foreign))
                except Exception as exc:  # noqa: BLE001 - one broken answer must not end the report
                    failed = Score(q["qid"], q["kind"], q["question"], bool(q["expected"]["none"]))
                    failed.error = type(exc).__name__
                    if debug:
                        import traceback

                        traceback.print_exc()
                    scores.append(failed)
        finally:
            await engine.dispose()
            if fake is not None:
                await fake.close()
        return scores
    finally:
        if database.embedded is not None:
            database.embedded.cleanup()


class _LlmRun:
    """The fake Messages API on loopback and the real ``LlmAnswerer`` pointed at it."""

    def __init__(self, charts: list[Chart], tally: LlmTally) -> None:
        from launch.sandbox.anthropic_fake import FakeAnthropic
        from launch.server import BackgroundServer, free_port
        from rag.llm import LlmAnswerer, LlmConfig
        from rag.phi import PresidioDetector

        self.tally = tally
        self.fake = FakeAnthropic(api_key="eval-key")
        port = free_port()
        self.server = BackgroundServer(self.fake.app, "127.0.0.1", port)  # type: ignore[arg-type]
        self.server.start()
        config = LlmConfig(
            api_key="eval-key", base_url=f"http://127.0.0.1:{port}", timeout_seconds=10
        )
        self.answerer = LlmAnswerer(config, PresidioDetector())
        self.charts = {(c.source, c.patient_id): c for c in charts}
        self.identifiers = {
            key: patient_identifiers(next(r for r in c.resources if r["resourceType"] == "Patient"))
            for key, c in self.charts.items()
        }

    def prepare(self, n: int, q: dict[str, Any], access: Any) -> Any:
        """Configure the fake for question ``n``; the access filter it is asked under."""
        from fhir_adapters import AccessFilter

        self.fake.clear()
        if self.tally.fake == "faithful":
            self.fake.configure(mode="faithful")
            return access
        mode = ADVERSARIAL_CYCLE[n % len(ADVERSARIAL_CYCLE)]
        key = (q["source"], q["patient"])
        others = [c for k, c in self.charts.items() if k != key]
        foreign = [
            f"{r['resourceType']}/{r['id']}"
            for c in others[:1]
            for r in c.resources
            if r["resourceType"] == "Observation"
        ][:1]
        own = self.charts[key].resources
        binaries = [f"Binary/{r['id']}" for r in own if r["resourceType"] == "Binary"][:1]
        self.fake.configure(mode=mode, foreign_refs=foreign, out_of_scope_refs=binaries)
        if mode == "out_of_scope":  # Binary is stored for this patient, but not readable here
            types = access.resource_types - {"Binary"}
            return AccessFilter(access.source, access.patient_id, types)
        return access

    async def answer(self, engine: Any, embedder: Any, access: Any, q: dict[str, Any]) -> Any:
        result = await self.answerer.answer(engine, embedder, access, q["question"], now=q["_now"])
        t = self.tally
        t.answers += 1
        t.llm += result.body.mode == "llm"
        t.gated += result.gated
        t.calls += len(result.calls)
        t.removed += sum(c.dropped for c in result.calls)
        if result.fallback:
            t.fallbacks[result.fallback] += 1
        bodies = self.fake.bodies()
        idents = self.identifiers[(q["source"], q["patient"])]
        t.phi_hits += phi_count(bodies, idents)
        t.identifiers += len(idents)
        t.payloads += len(bodies)
        t.input_tokens += result.usage["input_tokens"]
        t.output_tokens += result.usage["output_tokens"]
        t.cost_usd += result.cost_usd
        return result.body

    async def close(self) -> None:
        await self.answerer.close()
        self.server.stop()


# -- the command ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chartcite eval", description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=Path, help="the question set (JSONL) to score")
    p.add_argument("--split", choices=("public", "heldout", "all"), default="public")
    p.add_argument("--synthea", type=Path, default=SYNTHEA_DIR, help="the Synthea sample folder")
    p.add_argument("--no-synthea", action="store_true", help="generate without the Synthea charts")
    p.add_argument("--json", type=Path, help="also write every score as JSON here")
    p.add_argument("--limit", type=int, help="score only the first N questions (smoke runs)")
    p.add_argument("--debug", action="store_true", help="print the traceback of a failed answer")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the scratch database in DIR and reuse it next time (re-imports are no-ops)",
    )
    p.add_argument(
        "--mode",
        choices=("extractive", "llm"),
        default="extractive",
        help="llm: through rag.llm against the fake Anthropic API on loopback",
    )
    p.add_argument(
        "--fake",
        choices=("faithful", "adversarial"),
        default="faithful",
        help="with --mode llm: how the fake model answers",
    )
    p.add_argument("--generate", type=Path, metavar="OUT", help="write a question set instead")
    p.add_argument("--patients", type=int, default=20, help="with --generate: sandbox patients")
    p.add_argument("--per-phrasing", type=int, default=3, help="with --generate: questions each")
    p.add_argument(
        "--phrasings", type=Path, default=PHRASINGS, help="with --generate: the phrasings file"
    )
    p.add_argument("--slots", type=Path, default=SLOTS, help="with --generate: the slot lexicon")
    return p


def generate(args: argparse.Namespace) -> int:
    charts = sandbox_charts(args.patients)
    if args.no_synthea:
        print("Synthea charts skipped (--no-synthea)")
    elif not (args.synthea / "_shared").is_dir():
        print(f"Synthea charts skipped: no Synthea sample at {args.synthea}")
    else:
        charts += synthea_charts(args.synthea)
    questions = generate_questions(
        load_phrasings(args.phrasings),
        charts,
        per_phrasing=args.per_phrasing,
        slots=load_slots(args.slots),
    )
    args.generate.parent.mkdir(parents=True, exist_ok=True)
    with args.generate.open("w", encoding="utf-8") as out:
        for q in questions:
            out.write(json.dumps(q, sort_keys=False) + "\n")
    by = Counter((q["kind"], q["split"]) for q in questions)
    for kind in sorted({k for k, _ in by}):
        print(f"{kind:<22} public {by[(kind, 'public')]:>3}  heldout {by[(kind, 'heldout')]:>3}")
    print(f"{len(questions)} questions from {len(charts)} charts -> {args.generate}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.generate:
            return generate(args)
        if not args.questions:
            print(
                "chartcite eval: --questions FILE (or --generate OUT) is required", file=sys.stderr
            )
            return 2
        questions = read_questions(args.questions)
        if args.split != "all":
            questions = [q for q in questions if q["split"] == args.split]
        if args.limit:
            questions = questions[: args.limit]
        charts, skipped = _charts_for(questions, args.synthea)
    except EvalDataError as exc:
        print(f"chartcite eval: {exc}", file=sys.stderr)
        return 2
    kept = {(c.source, c.patient_id) for c in charts}
    for reason in skipped:
        if reason.startswith("warning:"):
            print(reason)
            continue
        n = sum(1 for q in questions if (q["source"], q["patient"]) not in kept)
        print(f"skipping {n} questions: {reason}")
    questions = [q for q in questions if (q["source"], q["patient"]) in kept]
    if not questions:
        print("no questions left to score")
        return 0
    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
        for old in work.glob("charts-*"):
            shutil.rmtree(old)
    else:
        work = Path(tempfile.mkdtemp(prefix="cc-eval-", dir="/tmp"))  # short: unix socket limit
    tally = LlmTally(fake=args.fake) if args.mode == "llm" else None
    try:
        scores = asyncio.run(_run(questions, charts, work, debug=args.debug, llm=tally))
    except Exception as exc:  # the pipeline under test could not load the charts
        if args.debug:
            raise
        print(
            f"chartcite eval: loading the charts failed ({type(exc).__name__}); rerun with --debug"
        )
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nsplit {args.split}: {len(scores)} questions\n")
    print(report(scores))
    if tally is not None:
        print("\n" + tally.report())
    if args.json:
        summary = summarise(scores)
        if tally is not None:
            summary["llm"] = {**asdict(tally), "fallbacks": dict(tally.fallbacks)}
        args.json.write_text(
            json.dumps({"summary": summary, "questions": [asdict(s) for s in scores]}, indent=1)
        )
    return 0
