"""Clinical note text for synthetic visits, written as DocumentReference (and Binary)."""

from __future__ import annotations

import base64
import datetime as dt

from launch.sandbox import synthetic_catalog as cat
from launch.sandbox.note_formats import render
from launch.sandbox.synthetic_fhir import (
    Resource,
    _age,
    _concept,
    _join,
    _ref,
    _with_unit,
    clinician_name,
    instant,
    meta,
)
from launch.sandbox.synthetic_medications import _ChartMedications
from launch.sandbox.synthetic_schedule import _Visit

NOTE_STYLES = ("plain", "markdown", "plain", "html", "latin1", "plain", "pdf")


class _ChartNotes(_ChartMedications):
    """Each visit's note: history, medications, allergies, vitals, results, assessment, plan."""

    def _latest(self, key: str, before: dt.date) -> tuple[dt.date, float] | None:
        earlier = [entry for entry in self.history.get(key, []) if entry[0] <= before]
        return earlier[-1] if earlier else None

    def _assessment(self, visit: _Visit) -> list[str]:
        lines: list[str] = []
        values, day = visit.values, visit.date
        for key in self.problems:
            problem = cat.PROBLEMS[key]
            text = problem.display
            if key == "t2dm":
                a1c = self._latest("a1c", day)
                earlier = [e for e in self.history.get("a1c", []) if e[0] < (a1c or (day,))[0]]
                if a1c and earlier:
                    delta = a1c[1] - earlier[-1][1]
                    status = (
                        "improving"
                        if delta < -0.3
                        else "worsening, above goal"
                        if delta > 0.3
                        else "stable"
                    )
                    text += (
                        f": hemoglobin A1c {a1c[1]} % on {a1c[0]}, previously "
                        f"{earlier[-1][1]} % on {earlier[-1][0]} ({status}; goal below 7.0 %)"
                    )
                elif a1c:
                    text += f": hemoglobin A1c {a1c[1]} % on {a1c[0]}"
            elif key == "prediabetes" and "a1c" in values:
                text += f": hemoglobin A1c {values['a1c']} %; lifestyle counseling given"
            elif key == "htn" and "sbp" in values:
                goal = "at goal" if values["sbp"] < 135 else "above goal"
                text += f": blood pressure {values['sbp']}/{values['dbp']} mmHg, {goal}"
            elif key == "hld":
                ldl = self._latest("ldl", day)
                text += f": LDL cholesterol {ldl[1]} mg/dL on {ldl[0]}" if ldl else ": on statin"
            elif key == "ckd3":
                egfr = self._latest("egfr", day)
                text += f": eGFR {egfr[1]} mL/min/1.73m2 on {egfr[0]}" if egfr else ""
            elif key == "depression" and "phq9" in values:
                text += f": PHQ-9 score {values['phq9']}"
                if key in self.remission and values["phq9"] < 5:
                    text += ", in remission on maintenance treatment"
            elif key == "obesity" and "bmi" in values:
                text += f": BMI {values['bmi']} kg/m2; diet and exercise counseling"
            elif key == "asthma":
                text += ": well controlled, rescue inhaler needed less than twice a week"
            elif key == "oa_knee":
                text += ": intermittent knee pain, walking daily"
            lines.append(text)
        dist = self.plan.distinctive
        text = f"{dist.condition.display}: {dist.assessment}"
        if dist.lab and (latest := self._latest(dist.lab, day)):
            lab = cat.LABS[dist.lab]
            text += f"; {_with_unit(f'{lab.label} {latest[1]}', lab.unit)} on {latest[0]}"
        lines.append(text)
        return lines

    def _note_text(self, visit: _Visit, i: int, title: str) -> str:
        plan = self.plan
        age = _age(plan.birth_date, visit.date)
        noun, pronoun, their = ("woman", "She", "her") if self.female else ("man", "He", "his")
        chronic = [cat.PROBLEMS[k].short for k in self.problems] + [
            plan.distinctive.condition.short
        ]
        history = _join(chronic)
        sections: list[tuple[str, str]] = []
        if visit.episode:
            problem = cat.PROBLEMS[visit.episode[0]]
            sections.append(("Chief complaint", visit.episode[1]))
            hpi = (
                f"{plan.name} is a {age}-year-old {noun} who {visit.episode[2]}. "
                f"Past history includes {history}."
            )
            sections.append(("History of present illness", hpi))
        else:
            reason = {
                "annual": "Annual physical examination and chronic disease follow-up.",
                "telehealth": "Telehealth follow-up by video.",
            }.get(visit.kind, f"Follow-up of {_join(chronic[:2])}.")
            sections.append(("Chief complaint", reason))
            hpi = (
                f"{plan.name} is a {age}-year-old {noun} seen for follow-up of {history}. "
                f"{pronoun} reports taking {their} medications as prescribed and has no new "
                "complaints."
            )
            sections.append(("History of present illness", hpi))
        if i == 0:
            past = [
                f"- {cat.PROBLEMS[k].display if k in cat.PROBLEMS else plan.distinctive.condition.display}"
                f" (since {self.onsets[k].year})"
                for k in [*self.problems, "distinctive"]
            ]
            past += [
                f"- {display} ({status} since {abated.year})"
                for display, status, abated in self.past_problems
            ]
            sections.append(("Past medical history", "\n".join(past)))
            sections.append(
                (
                    "Social history",
                    "Lives in "
                    + plan.address[1]
                    + ", "
                    + plan.address[2]
                    + ". Never smoker. Alcohol: rarely.",
                )
            )
        meds = [
            f"- {cat.DRUGS[c.drug].name}: {cat.DRUGS[c.drug].sig}" for c in self._active_courses(i)
        ]
        sections.append(("Current medications", "\n".join(meds) or "None."))
        allergies = "; ".join(f"{a.display} ({a.manifestation[1].lower()})" for a in self.allergies)
        sections.append(("Allergies", allergies or "No known drug allergies."))
        values = visit.values
        if "sbp" in values:
            vitals = (
                f"BP {values['sbp']}/{values['dbp']} mmHg, heart rate {values['hr']}/min, "
                f"respiratory rate {values['rr']}/min, temperature {values['temp']} C, "
                f"SpO2 {values['spo2']} %, weight {values['weight']} kg, "
                f"BMI {values['bmi']} kg/m2."
            )
            sections.append(("Vital signs", vitals))
        results = [
            _with_unit(f"{cat.LABS[k].label} {values[k]}", cat.LABS[k].unit)
            for k in cat.LABS
            if k in values and cat.LABS[k].category != "vital-signs"
        ]
        if results:
            sections.append(("Results", f"Drawn {visit.date}: " + "; ".join(results) + "."))
        if visit.episode:
            problem = cat.PROBLEMS[visit.episode[0]]
            sections.append(("Assessment", f"1. {problem.display}."))
        else:
            sections.append(
                (
                    "Assessment",
                    "\n".join(f"{n}. {line}." for n, line in enumerate(self._assessment(visit), 1)),
                )
            )
        plan_lines = self._medication_changes(i) + visit.plan
        if visit.episode:
            plan_lines.append(
                "Fluids and rest. Return if symptoms worsen or do not improve within 7 days."
            )
            follow_up = "As needed."
        else:
            if not self._medication_changes(i):
                plan_lines.insert(0, "Continue current medications.")
            if plan.diabetic:
                plan_lines.append("Repeat hemoglobin A1c in 3 months.")
            follow_up = "Return in 3 months." if plan.diabetic else "Return in 4 months."
        sections.append(("Plan", "\n".join(f"- {line}" for line in plan_lines)))
        sections.append(("Follow-up", follow_up))
        header = [
            title.upper(),
            f"Patient: {plan.name}    DOB: {plan.birth_date}    MRN: {plan.mrn}",
            f"Date of service: {visit.date}    Clinician: {clinician_name(visit.clinician)}    "
            + f"Location: {visit.org['name']}",
        ]
        body = [f"{name}:\n{text}" for name, text in sections]
        signed = f"Electronically signed by {clinician_name(visit.clinician)} on {visit.date}."
        return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n\n" + signed + "\n"

    def _note(self, visit: _Visit, i: int) -> None:
        loinc, title = (
            ("34117-2", "History and physical note") if i == 0 else ("11506-3", "Progress note")
        )
        text = self._note_text(visit, i, title)
        # Real EHRs send notes as plain text, Markdown, HTML, Latin-1 text or PDF, inline or in a
        # Binary; each patient's notes cycle through them.
        doc_id = self._id("doc")
        n = self.counts["doc"]
        style = NOTE_STYLES[n % len(NOTE_STYLES)]
        if i == len(self.visits) - 1:  # the latest note: Markdown headings or Label: lines
            style = ("latin1", "plain", "markdown", style)[self.plan.index % 4]
        content_type, raw = render(text, style)
        data = base64.b64encode(raw).decode("ascii")
        written = visit.moment + dt.timedelta(minutes=90)
        attachment: Resource = {"contentType": content_type, "language": "en-US"}
        if style in ("html", "pdf") or n % 7 == 2:
            binary_id = self._id("bin")
            attachment["url"] = f"Binary/{binary_id}"
            self.out["Binary"].append(
                {
                    "resourceType": "Binary",
                    "id": binary_id,
                    "meta": meta(written),
                    "contentType": content_type,
                    "securityContext": self.patient_ref,
                    "data": data,
                }
            )
        else:
            attachment["data"] = data
        attachment |= {
            "size": len(raw),
            "title": title,
            "creation": instant(written),
        }
        end = visit.moment + dt.timedelta(minutes=20 if visit.kind == "telehealth" else 30)
        self.out["DocumentReference"].append(
            {
                "resourceType": "DocumentReference",
                "id": doc_id,
                "meta": meta(written),
                "status": "current",
                "docStatus": "final",
                "type": _concept(cat.LOINC, loinc, title),
                "category": [_concept(cat.DOC_CATEGORY, "clinical-note", "Clinical Note")],
                "subject": self.patient_ref,
                "date": instant(written),
                "author": [
                    _ref("Practitioner", visit.clinician.id, clinician_name(visit.clinician))
                ],
                "custodian": _ref("Organization", visit.org["id"], visit.org["name"]),
                "description": f"{title}, {visit.date}",
                "content": [{"attachment": attachment}],
                "context": {
                    "encounter": [_ref("Encounter", visit.id)],
                    "period": {"start": instant(visit.moment), "end": instant(end)},
                },
            }
        )
