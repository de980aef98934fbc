"""Medication courses of a synthetic chart and the MedicationRequest orders that record them."""

from __future__ import annotations

import datetime as dt

from launch.sandbox import synthetic_catalog as cat
from launch.sandbox.synthetic_fhir import (
    Resource,
    _age,
    _concept,
    _join,
    _ref,
    clinician_name,
    instant,
    meta,
)
from launch.sandbox.synthetic_schedule import _ChartBase, _Course, _Visit


class _ChartMedications(_ChartBase):
    """Courses started, renewed, dose-changed, switched and stopped, and their orders."""

    def _add(
        self,
        drug: str,
        start: int,
        reason: str | None,
        stop: int | None = None,
        stop_reason: str | None = None,
        replaces: _Course | None = None,
    ) -> _Course:
        course = _Course(drug, start, reason, stop, stop_reason, replaces)
        self.courses.append(course)
        return course

    def _switch(self, old: str, new: str, at: int, reason: str, why: str) -> None:
        """Start `old` at the first visit, stop it at visit `at` and start `new` instead."""
        first = self._add(old, 0, reason, stop=at, stop_reason=why)
        self._add(new, at, reason, replaces=first)

    def _plan_courses(self) -> None:
        plan, changes, rng = self.plan, self._changes, self.rng
        if plan.diabetic:
            dm, dm2 = changes.get("dm"), changes.get("dm2")
            if plan.a1c_trend == "improving" and dm is not None:
                self._switch(
                    "metformin_1",
                    "metformin_2",
                    dm,
                    "t2dm",
                    "Dose increased because hemoglobin A1c above goal",
                )
                self._add(rng.choice(("canagliflozin", "liraglutide")), dm, "t2dm")
            else:
                self._add("metformin_1", 0, "t2dm")
            if plan.a1c_trend == "worsening" and dm is not None:
                first = self._add("canagliflozin", dm, "t2dm")
                if dm2 is not None:
                    first.stop, first.stop_reason = dm2, "Recurrent genital yeast infections"
                    self._add("liraglutide", dm2, "t2dm", replaces=first)
                self._add("glargine", self._last_scheduled(), "t2dm")
            if _age(plan.birth_date, self.today) >= 50 and plan.index % 2 == 0:
                self._add("aspirin_81", 0, None)
        if "htn" in self.problems:
            at, variant = changes["htn"] or 1, plan.index % 3
            if variant == 0:
                self._switch(
                    "lisinopril_10",
                    "lisinopril_20",
                    at,
                    "htn",
                    "Dose increased because blood pressure above goal",
                )
            elif variant == 1:
                self._switch(
                    "lisinopril_10",
                    "losartan_50",
                    at,
                    "htn",
                    "Persistent dry cough on ACE inhibitor",
                )
            else:
                self._switch(
                    "amlodipine_2_5",
                    "amlodipine_5",
                    at,
                    "htn",
                    "Dose increased because blood pressure above goal",
                )
                self._add("hctz_25", 0, "htn")
        if "hld" in self.problems:
            at, variant = changes["hld"] or 1, (plan.index // 3) % 3
            if variant == 0:
                self._switch(
                    "atorvastatin_20",
                    "atorvastatin_40",
                    at,
                    "hld",
                    "Dose increased because LDL cholesterol above goal",
                )
            elif variant == 1:
                self._switch(
                    "simvastatin_20", "rosuvastatin_5", at, "hld", "Muscle aches on simvastatin"
                )
            else:
                self._add("atorvastatin_20", 0, "hld")
        if "depression" in self.problems:
            self._switch(
                "sertraline_50",
                "sertraline_100",
                changes["dep"] or 1,
                "depression",
                "Partial response; dose increased",
            )
        if "asthma" in self.problems:
            self._add("fluticasone", 0, "asthma")
            self._add("albuterol", 0, "asthma")
        if "oa_knee" in self.problems:
            if "ckd3" in self.problems:
                self._switch(
                    "naproxen_220",
                    "acetaminophen_325",
                    1,
                    "oa_knee",
                    "NSAID stopped because of chronic kidney disease",
                )
            else:
                self._add("naproxen_220", 0, "oa_knee")
        for drug in plan.distinctive.drugs:
            self._add(drug, 0, "distinctive")
        for i, visit in enumerate(self.visits):
            if visit.episode and visit.episode[3]:
                self._add(visit.episode[3], i, visit.episode[0])

    def _orders(self, course: _Course) -> None:
        drug = cat.DRUGS[course.drug]
        authored = [course.start]
        if drug.days is None:
            for i in range(course.start + 1, course.stop or len(self.visits)):
                gap = (self.visits[i].date - self.visits[authored[-1]].date).days
                if self.visits[i].kind != "acute" and gap >= 330:
                    authored.append(i)
                    self.renewals.setdefault(i, []).append(drug.name)
        prior = course.replaces.last_order if course.replaces else None
        for n, i in enumerate(authored):
            visit = self.visits[i]
            written = visit.moment + dt.timedelta(minutes=20)
            last = n == len(authored) - 1
            if drug.days:
                status, ended = "completed", written + dt.timedelta(days=drug.days)
            elif not last:
                status, ended = "completed", self.visits[authored[n + 1]].moment
            elif course.stop is not None:
                status, ended = "stopped", self.visits[course.stop].moment
            else:
                status, ended = "active", None
            order_id = self._id("medrx")
            self.out["MedicationRequest"].append(
                self._order(order_id, course, drug, visit, written, status, ended, prior)
            )
            prior = order_id
        course.last_order = prior

    def _order(
        self,
        order_id: str,
        course: _Course,
        drug: cat.Drug,
        visit: _Visit,
        written: dt.datetime,
        status: str,
        ended: dt.datetime | None,
        prior: str | None,
    ) -> Resource:
        repeat: Resource = {
            "frequency": drug.frequency,
            "period": drug.period,
            "periodUnit": drug.period_unit,
        }
        supply = drug.days or 90
        if drug.days:
            repeat["boundsDuration"] = {
                "value": drug.days,
                "unit": "days",
                "system": cat.UCUM,
                "code": "d",
            }
        validity = {"start": instant(written)}
        if ended is not None:
            validity["end"] = instant(ended)
        order: Resource = {
            "resourceType": "MedicationRequest",
            "id": order_id,
            "meta": meta(ended if ended is not None else written),
            "status": status,
            "intent": "order",
            "category": [
                _concept(
                    "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                    "outpatient",
                    "Outpatient",
                )
            ],
        }
        if status == "stopped" and course.stop_reason:
            order["statusReason"] = {"text": course.stop_reason}
        # Some prescribers order the brand (RxNorm SBD) rather than the generic (SCD).
        rxcui, display = drug.rxcui, drug.display
        if course.drug in cat.BRANDS and self.plan.index % 2 == 1:
            rxcui, display = cat.BRANDS[course.drug]
        # Real EHRs name the drug three ways: a codeable concept, a reference to a Medication
        # resource, or a reference to a Medication contained in the order.
        form = self.counts["medrx"] % 5
        if form == 3:
            order["medicationReference"] = _ref("Medication", f"med-rx{rxcui}", display)
            if (rxcui, display) not in self.referenced_medications:
                self.referenced_medications.append((rxcui, display))
        elif form == 1:
            contained = {
                "resourceType": "Medication",
                "id": "m1",
                "code": _concept(cat.RXNORM, rxcui, display),
            }
            head = {k: order.pop(k) for k in ("resourceType", "id", "meta")}
            order = head | {"contained": [contained]} | order  # contained follows meta
            order["medicationReference"] = {"reference": "#m1", "display": display}
        else:
            order["medicationCodeableConcept"] = _concept(cat.RXNORM, rxcui, display)
        order |= {
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", visit.id),
            "authoredOn": instant(written),
            "requester": _ref("Practitioner", visit.clinician.id, clinician_name(visit.clinician)),
        }
        reason_id = self.condition_ids.get(course.reason or "")
        if reason_id:
            order["reasonReference"] = [_ref("Condition", reason_id)]
        order["dosageInstruction"] = [
            {
                "sequence": 1,
                "text": drug.sig,
                "timing": {"repeat": repeat},
                "asNeededBoolean": drug.prn,
                "doseAndRate": [{"doseQuantity": {"value": drug.dose, "unit": drug.dose_unit}}],
            }
        ]
        order["dispenseRequest"] = {
            "validityPeriod": validity,
            "numberOfRepeatsAllowed": 0 if drug.days else 3,
            "expectedSupplyDuration": {
                "value": supply,
                "unit": "days",
                "system": cat.UCUM,
                "code": "d",
            },
        }
        if prior:
            order["priorPrescription"] = _ref("MedicationRequest", prior)
        return order

    def _active_courses(self, i: int) -> list[_Course]:
        """Courses the patient is taking when visit `i` starts (at the first visit: all started)."""
        day = self.visits[i].date
        taking = []
        for c in self.courses:
            began = c.start < i or c.start == i == 0
            ended = c.stop is not None and c.stop < i
            drug = cat.DRUGS[c.drug]
            short_over = (
                drug.days is not None and (day - self.visits[c.start].date).days > drug.days
            )
            if began and not ended and not short_over:
                taking.append(c)
        return taking

    def _medication_changes(self, i: int) -> list[str]:
        lines = []
        for c in self.courses:
            drug = cat.DRUGS[c.drug]
            if c.stop == i:
                why = (c.stop_reason or "changed")[0].lower() + (c.stop_reason or "changed")[1:]
                new = next((n for n in self.courses if n.replaces is c), None)
                if new is None:
                    lines.append(f"Stopped {drug.name}: {c.stop_reason}.")
                elif new.drug.split("_")[0] == c.drug.split("_")[0]:
                    lines.append(f"Changed {drug.name} to {cat.DRUGS[new.drug].name} ({why}).")
                else:
                    lines.append(
                        f"Stopped {drug.name} ({why}); started {cat.DRUGS[new.drug].name}: "
                        f"{cat.DRUGS[new.drug].sig}."
                    )
            elif c.start == i and c.replaces is None and i > 0:
                lines.append(f"Started {drug.name}: {drug.sig}.")
        if self.renewals.get(i):
            lines.append(f"Prescriptions renewed: {_join(self.renewals[i])}.")
        return lines
