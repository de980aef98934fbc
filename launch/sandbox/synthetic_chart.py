"""The chart builder: one synthetic patient's encounters, measurements, problems and care."""

from __future__ import annotations

import datetime as dt

from launch.sandbox import synthetic_catalog as cat
from launch.sandbox.synthetic_fhir import (
    _TZ,
    Resource,
    _age,
    _concept,
    _egfr,
    _quantity,
    _ref,
    _rounded,
    clinician_name,
    instant,
    meta,
)
from launch.sandbox.synthetic_medications import _ChartMedications
from launch.sandbox.synthetic_notes import _ChartNotes
from launch.sandbox.synthetic_schedule import _ORDER, _Visit

_DERIVED = ("chol", "egfr", "glucose", "bmi")
_CATEGORY_DISPLAY = {"laboratory": "Laboratory", "vital-signs": "Vital Signs", "survey": "Survey"}
_FLAG_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}


class _ChartBuilder(_ChartNotes, _ChartMedications):
    """Builds one patient's chart from a plan; every random choice comes from `rng`."""

    def build(self) -> list[Resource]:
        """All of the patient's resources except the Patient itself."""
        self._changes = self._change_points()
        self._init_series()
        self._plan_courses()
        self._conditions()
        self._allergies()
        for course in self.courses:
            self._orders(course)
        self._immunizations()
        self._procedures()
        for i, visit in enumerate(self.visits):
            self._encounter(visit)
            if visit.kind != "telehealth":
                self._vitals(visit)
                self._labs(visit, i)
            self._note(visit, i)
        return [res for rtype in _ORDER for res in self.out[rtype]]

    # -- conditions and allergies ------------------------------------------------------------

    def _condition(
        self,
        key: str,
        problem: cat.Problem,
        onset: dt.date,
        recorded: dt.datetime,
        visit: _Visit | None = None,
        status: str = "active",
        abated: dt.date | None = None,
    ) -> str:
        """A problem-list item, or (with `visit`) that visit's resolved diagnosis."""
        cid = self._id("cond", 2)
        if visit is not None:
            status, abated = "resolved", visit.date + dt.timedelta(days=14)
        res: Resource = {
            "resourceType": "Condition",
            "id": cid,
            "meta": meta(recorded),
            "clinicalStatus": _concept(cat.COND_CLINICAL, status, status.capitalize()),
            "verificationStatus": _concept(cat.COND_VERIFICATION, "confirmed", "Confirmed"),
            "category": [
                _concept(cat.COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")
                if visit is not None
                else _concept(cat.COND_CATEGORY, "problem-list-item", "Problem List Item")
            ],
            "code": _concept(cat.SNOMED, problem.code, problem.display),
            "subject": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
        res["onsetDateTime"] = onset.isoformat()
        if abated is not None:
            res["abatementDateTime"] = abated.isoformat()
        res["recordedDate"] = instant(recorded)
        res["recorder"] = _ref("Practitioner", self.plan.pcp)
        self.out["Condition"].append(res)
        self.condition_ids[key] = cid
        self.onsets[key] = onset
        return cid

    def _conditions(self) -> None:
        first = self.visits[0]
        keyed = [(k, cat.PROBLEMS[k]) for k in self.problems]
        keyed.append(("distinctive", self.plan.distinctive.condition))
        for key, problem in keyed:
            if key == "obesity":
                onset = first.date
            else:
                onset = first.date - dt.timedelta(days=self.rng.randint(200, 3650))
            recorded = dt.datetime.combine(
                max(onset, first.date - dt.timedelta(days=3650)), dt.time(10, 0), tzinfo=_TZ
            )
            status = "remission" if key in self.remission else "active"
            self._condition(key, problem, onset, recorded, status=status)
        if self.plan.index % 3 == 2:  # a past problem, resolved or inactive, on the list
            code, display, status, years = cat.PAST_PROBLEMS[(self.plan.index // 3) % 3]
            abated = first.date - dt.timedelta(days=self.rng.randint(60, 365 * years))
            onset = abated - dt.timedelta(days=self.rng.randint(90, 700))
            recorded = dt.datetime.combine(onset, dt.time(10, 0), tzinfo=_TZ)
            self.past_problems.append((display, status, abated))
            self._condition(
                "past",
                cat.Problem(code, display, display.lower()),
                onset,
                recorded,
                status=status,
                abated=abated,
            )
        for visit in self.visits:
            if visit.episode:
                onset = visit.date - dt.timedelta(days=self.rng.randint(2, 12))
                visit.condition_id = self._condition(
                    visit.episode[0],
                    cat.PROBLEMS[visit.episode[0]],
                    onset,
                    visit.moment + dt.timedelta(minutes=30),
                    visit,
                )

    def _allergies(self) -> None:
        drugs = {c.drug for c in self.courses}
        pool = [
            a
            for a in cat.ALLERGIES
            if not (a.code == "1191" and "aspirin_81" in drugs)
            and not (a.code == "7980" and "amox_clav" in drugs)
        ]
        chosen = self.rng.sample(pool, self.rng.choice((0, 0, 1, 1, 2)))
        if self.plan.distinctive.key == "peanut":
            chosen.append(cat.PEANUT_ALLERGY)
        self.allergies = chosen
        recorded = self.visits[0].moment + dt.timedelta(minutes=15)
        for allergy in chosen:
            self.out["AllergyIntolerance"].append(
                {
                    "resourceType": "AllergyIntolerance",
                    "id": self._id("alg", 2),
                    "meta": meta(recorded),
                    "clinicalStatus": _concept(cat.ALLERGY_CLINICAL, "active", "Active"),
                    "verificationStatus": _concept(
                        cat.ALLERGY_VERIFICATION, "confirmed", "Confirmed"
                    ),
                    "type": "allergy",
                    "category": [allergy.category],
                    "criticality": allergy.criticality,
                    "code": _concept(allergy.system, allergy.code, allergy.display),
                    "patient": self.patient_ref,
                    "recordedDate": instant(recorded),
                    "recorder": _ref("Practitioner", self.plan.pcp),
                    "reaction": [
                        {
                            "manifestation": [_concept(cat.SNOMED, *allergy.manifestation)],
                            "severity": "severe" if allergy.criticality == "high" else "mild",
                        }
                    ],
                }
            )

    # -- immunizations and procedures --------------------------------------------------------

    def _immunize(self, key: str, visit: _Visit | None, day: dt.date | None = None) -> None:
        code, display = cat.VACCINES[key]
        if visit is not None:
            when = visit.moment + dt.timedelta(minutes=40)
        else:
            when = dt.datetime.combine(day or self.today, dt.time(11, 0), tzinfo=_TZ)
        res: Resource = {
            "resourceType": "Immunization",
            "id": self._id("imm", 2),
            "meta": meta(when),
            "status": "completed",
            "vaccineCode": _concept(cat.CVX, code, display),
            "patient": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
        res["occurrenceDateTime"] = instant(when)
        res["primarySource"] = visit is not None
        if visit is None:
            res["reportOrigin"] = _concept(
                "http://terminology.hl7.org/CodeSystem/immunization-origin",
                "record",
                "Written Record",
                "Pharmacy record",
            )
        res["lotNumber"] = (
            f"{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{self.rng.randint(1000, 9999)}"
        )
        res["doseQuantity"] = _quantity(0.5, "mL")
        if visit is not None:
            res["performer"] = [{"actor": _ref("Practitioner", visit.clinician.id)}]
            visit.plan.append(f"{display} vaccine (CVX {code}) given today.")
        self.out["Immunization"].append(res)

    def _immunizations(self) -> None:
        plan, rng = self.plan, self.rng
        first, today = self.visits[0].date, self.today
        # Some patients always decline the flu shot: their charts hold no influenza vaccine.
        flu_years = range(first.year, today.year + 1) if plan.index % 6 != 5 else range(0)
        if not flu_years:
            next(v for v in self.visits if v.kind == "annual").plan.append(
                "Influenza vaccine offered; patient declines."
            )
        for year in flu_years:
            key = ("flu_140", "flu_141", "flu_150")[year % 3]
            season = [
                v
                for v in self.visits
                if v.kind != "telehealth" and dt.date(year, 9, 1) <= v.date <= dt.date(year, 12, 31)
            ]
            if season:
                self._immunize(key, season[0])
            else:
                day = dt.date(year, 10, rng.randint(1, 28))
                if first <= day <= today - dt.timedelta(days=3):
                    self._immunize(key, None, day)
        annuals = [v for v in self.visits if v.kind == "annual"]
        if plan.index % 3 == 0:
            self._immunize("tdap", annuals[0])
        elif plan.index % 3 == 1:
            self._immunize("td", annuals[0])
        age = _age(plan.birth_date, today)
        if age >= 65 or plan.diabetic:
            self._immunize("pcv13", annuals[-1])
            if age >= 65 and len(annuals) > 1 and plan.index % 2:
                self._immunize("ppsv23", annuals[0])
        if plan.index % 5 != 4:
            day = dt.date(today.year - 1, 10, rng.randint(1, 28))
            if day >= first:
                self._immunize("covid_208" if plan.index % 2 else "covid_207", None, day)

    def _procedure(self, key: str, visit: _Visit | None, day: dt.date | None = None) -> None:
        code, display = cat.PROCEDURES[key]
        if visit is not None:
            when = visit.moment + dt.timedelta(minutes=30)
        else:
            when = dt.datetime.combine(day or self.today, dt.time(9, 30), tzinfo=_TZ)
        res: Resource = {
            "resourceType": "Procedure",
            "id": self._id("proc", 2),
            "meta": meta(when),
            "status": "completed",
            "code": _concept(cat.SNOMED, code, display),
            "subject": self.patient_ref,
        }
        if visit is not None:
            res["encounter"] = _ref("Encounter", visit.id)
            res["performer"] = [{"actor": _ref("Practitioner", visit.clinician.id)}]
        res["performedDateTime"] = instant(when)
        self.out["Procedure"].append(res)

    def _procedures(self) -> None:
        plan, latest = self.plan, self.today - dt.timedelta(days=2)
        if plan.index % 10 == 4:  # charts with no Procedure at all (the EHR records none)
            return
        age = _age(plan.birth_date, self.today)
        annuals = [v for v in self.visits if v.kind == "annual"]
        for visit in annuals:
            self._procedure("med_rec", visit)
            self._procedure("depression_screen", visit)
            if plan.diabetic:
                self._procedure("foot_exam", visit)
                visit.plan.append(
                    "Diabetic foot exam done; monofilament sensation intact. "
                    "Referred for annual diabetic retinal exam."
                )
                if visit.date + dt.timedelta(days=21) <= latest:
                    self._procedure("retinal_exam", None, visit.date + dt.timedelta(days=21))
            if self.female and age >= 50 and visit.date + dt.timedelta(days=10) <= latest:
                self._procedure("mammography", None, visit.date + dt.timedelta(days=10))
                visit.plan.append("Screening mammogram ordered.")
        for visit in self.visits:
            if visit.episode and visit.episode[0] == "bronchitis":
                self._procedure("chest_xray", visit)
                visit.plan.append("Chest X-ray today: no infiltrate.")
        if "htn" in self.problems:
            self._procedure("ecg", annuals[0])
            annuals[0].plan.append("ECG today: normal sinus rhythm.")
        if "asthma" in self.problems or plan.distinctive.key in ("copd", "sarcoidosis"):
            self._procedure("spirometry", annuals[-1])
        if plan.distinctive.key == "chf":
            self._procedure("echo", annuals[0])
            annuals[0].plan.append("Echocardiogram: ejection fraction 35-40%.")
        if age >= 50 and plan.index % 3 == 0:
            self._procedure("colonoscopy", None, self.visits[0].date + dt.timedelta(days=100))

    # -- encounters and measurements ---------------------------------------------------------

    def _encounter(self, visit: _Visit) -> None:
        virtual = visit.kind == "telehealth"
        code, display = cat.ENCOUNTER_TYPES[visit.kind]
        res: Resource = {
            "resourceType": "Encounter",
            "id": visit.id,
            "meta": meta(visit.moment + dt.timedelta(hours=2)),
            "status": "finished",
            "class": {
                "system": cat.ACT_CODE,
                "code": "VR" if virtual else "AMB",
                "display": "virtual" if virtual else "ambulatory",
            },
            "type": [_concept(cat.SNOMED, code, display)],
            "subject": self.patient_ref,
            "participant": [
                {
                    "type": [_concept(cat.PARTICIPATION, "PPRF", "primary performer")],
                    "individual": _ref(
                        "Practitioner", visit.clinician.id, clinician_name(visit.clinician)
                    ),
                }
            ],
            "period": {
                "start": instant(visit.moment),
                "end": instant(visit.moment + dt.timedelta(minutes=20 if virtual else 30)),
            },
        }
        reason = visit.episode[0] if visit.episode else None
        if visit.kind in ("followup", "telehealth") and self.plan.problems:
            reason = self.plan.problems[0]
        if reason:
            problem = cat.PROBLEMS[reason]
            res["reasonCode"] = [_concept(cat.SNOMED, problem.code, problem.display)]
        if visit.condition_id:
            res["diagnosis"] = [{"condition": _ref("Condition", visit.condition_id), "rank": 1}]
        res["serviceProvider"] = _ref("Organization", visit.org["id"], visit.org["name"])
        self.out["Encounter"].append(res)

    def _observation_base(self, visit: _Visit, category: str, code: Resource) -> Resource:
        vital = category == "vital-signs"
        taken = visit.moment + dt.timedelta(minutes=5 if vital else 25)
        issued = taken + dt.timedelta(minutes=5 if vital else 180)
        return {
            "resourceType": "Observation",
            "id": self._id("obs", 4),
            "meta": meta(issued),
            "status": "final",
            "category": [_concept(cat.OBS_CATEGORY, category, _CATEGORY_DISPLAY[category])],
            "code": code,
            "subject": self.patient_ref,
            "encounter": _ref("Encounter", visit.id),
            "effectiveDateTime": instant(taken),
            "issued": instant(issued),
        }

    def _lab_source(self, day: dt.date) -> int:
        """Which of three reference labs resulted the patient's tests on `day`.

        Each lab codes some tests with its own LOINC variant (`cat.LOINC_VARIANTS`); the third
        also sends its local order code first. Every fourth patient moves to the next lab midway.
        """
        source = self.plan.index % 3
        middle = self.visits[len(self.visits) // 2].date
        return (source + 1) % 3 if self.plan.index % 4 == 0 and day >= middle else source

    def _lab_code(self, key: str, lab: cat.Lab, day: dt.date) -> Resource:
        source = self._lab_source(day)
        variants = cat.LOINC_VARIANTS.get(key, ((lab.loinc, lab.display),))
        code, display = variants[source % len(variants)]
        concept = _concept(cat.LOINC, code, display)
        local = cat.LOCAL_LAB_CODES.get(key)
        if source == 2 and local is not None:
            concept["coding"].insert(
                0, {"system": cat.LOCAL_LAB_SYSTEM, "code": local[0], "display": local[1]}
            )
            concept["text"] = lab.label
        return concept

    def _observation(self, visit: _Visit, key: str, value: float) -> Resource:
        lab = cat.LABS[key]
        res = self._observation_base(visit, lab.category, self._lab_code(key, lab, visit.date))
        res["valueQuantity"] = _quantity(value, lab.unit)
        if lab.low is not None or lab.high is not None:
            flag = "N"
            if lab.high is not None and value > lab.high:
                flag = "H"
            elif lab.low is not None and value < lab.low:
                flag = "L"
            res["interpretation"] = [_concept(cat.INTERPRETATION, flag, _FLAG_DISPLAY[flag])]
            bounds: Resource = {}
            if lab.low is not None:
                bounds["low"] = _quantity(lab.low, lab.unit)
            if lab.high is not None:
                bounds["high"] = _quantity(lab.high, lab.unit)
            res["referenceRange"] = [bounds]
        return res

    def _measure(self, visit: _Visit, key: str, value: float | None = None) -> float:
        lab = cat.LABS[key]
        raw = self._value(key, visit.date) if value is None else value
        result = _rounded(raw, lab.decimals)
        visit.values[key] = result
        self.history.setdefault(key, []).append((visit.date, result))
        self.out["Observation"].append(self._observation(visit, key, result))
        return result

    def _vitals(self, visit: _Visit) -> None:
        systolic = _rounded(self._value("sbp", visit.date), 0)
        diastolic = _rounded(systolic * 0.56 + self.rng.uniform(4, 12), 0)
        visit.values |= {"sbp": systolic, "dbp": diastolic}
        self.history.setdefault("sbp", []).append((visit.date, systolic))
        number = int(visit.id.rsplit("-", 1)[-1])
        # Some EHR builds code the panel 55284-4; every fourth visit's panel here does.
        panel_code = cat.BP_PANEL_ALT if number % 4 == 1 else cat.BP_PANEL
        panel = self._observation_base(visit, "vital-signs", _concept(cat.LOINC, *panel_code))
        panel["component"] = [
            {
                "code": _concept(cat.LOINC, *cat.BP_SYSTOLIC),
                "valueQuantity": _quantity(systolic, "mm[Hg]"),
            },
            {
                "code": _concept(cat.LOINC, *cat.BP_DIASTOLIC),
                "valueQuantity": _quantity(diastolic, "mm[Hg]"),
            },
        ]
        # Real EHRs list BP components in either order; every third panel here lists diastolic first.
        if number % 3 == 0:
            panel["component"].reverse()
        self.out["Observation"].append(panel)
        self._measure(visit, "hr")
        self._measure(visit, "rr")
        febrile = visit.episode is not None and visit.episode[0] in ("sinusitis", "bronchitis")
        self._measure(visit, "temp", self.rng.uniform(37.6, 38.3) if febrile else None)
        self._measure(visit, "spo2", min(self._value("spo2", visit.date), 100))
        if visit.kind == "annual" or "height" not in self.history:
            self._measure(visit, "height")
        weight = self._measure(visit, "weight")
        self._measure(visit, "bmi", weight / (self.height / 100) ** 2)

    def _labs(self, visit: _Visit, i: int) -> None:
        plan = self.plan
        keys: list[str] = []
        if visit.kind == "annual":
            keys += [*cat.LIPID_PANEL, *cat.BASIC_PANEL, *cat.CBC_PANEL]
            if plan.diabetic or "prediabetes" in self.problems or plan.index % 2 == 0:
                keys.append("a1c")
            if plan.diabetic:
                keys.append("uacr")
            if "depression" not in self.problems:
                keys.append("phq2")
        elif visit.kind == "followup":
            if plan.diabetic:
                keys.append("a1c")
            if "htn" in self.problems or (plan.diabetic and i % 2):
                keys += ["creatinine", "egfr", "potassium"]
            if "hld" in self.problems and (i % 2 == 0 or i == self._changes["hld"]):
                keys += list(cat.LIPID_PANEL)
        if visit.scheduled:
            if "depression" in self.problems:
                keys.append("phq9")
            if plan.distinctive.lab:
                keys.append(plan.distinctive.lab)
        keys = sorted(dict.fromkeys(keys), key=lambda k: k in _DERIVED)
        for key in keys:
            self._measure(visit, key, self._derived(key, visit))

    def _derived(self, key: str, visit: _Visit) -> float | None:
        v, u = visit.values, self.rng.uniform
        if key == "chol":
            return v["ldl"] + v["hdl"] + v["tg"] / 5
        if key == "egfr":
            return _egfr(v["creatinine"], _age(self.plan.birth_date, visit.date), self.female)
        if key == "glucose" and self.plan.diabetic:
            a1c = v.get("a1c", self._value("a1c", visit.date))
            return 28.7 * a1c - 46.7 + u(-12, 12)
        if key == "phq2":
            return max(0.0, self._value("phq2", visit.date))
        return None
