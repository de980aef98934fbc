"""FHIR datatype, date and text helpers shared by the synthetic patient generator."""

from __future__ import annotations

import datetime as dt
from typing import Any

from launch.sandbox import synthetic_catalog as cat

Resource = dict[str, Any]
_TZ = dt.timezone(dt.timedelta(hours=-5))  # clinic local time, written with its offset


def instant(moment: dt.datetime) -> str:
    """A FHIR instant/dateTime with seconds and the timezone offset."""
    return moment.isoformat(timespec="seconds")


def meta(moment: dt.datetime) -> dict[str, str]:
    """`Resource.meta` for a first version written at `moment`."""
    return {"versionId": "1", "lastUpdated": instant(moment)}


def _ref(rtype: str, rid: str, display: str | None = None) -> dict[str, str]:
    ref = {"reference": f"{rtype}/{rid}"}
    if display:
        ref["display"] = display
    return ref


def _concept(system: str, code: str, display: str, text: str | None = None) -> Resource:
    return {
        "coding": [{"system": system, "code": code, "display": display}],
        "text": text or display,
    }


def _quantity(value: float, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": cat.UCUM, "code": unit}


def _rounded(value: float, decimals: int) -> float:
    return round(value) if decimals == 0 else round(value, decimals)


def _age(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _egfr(creatinine: float, age: int, female: bool) -> float:
    """CKD-EPI 2021 creatinine equation (mL/min/1.73 m2)."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.2 * 0.9938**age
    return value * 1.012 if female else value


def _weekday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=max(0, day.weekday() - 4))


def _clinician(cid: str) -> cat.Clinician:
    return next(c for c in cat.CLINICIANS if c.id == cid)


def clinician_name(c: cat.Clinician) -> str:
    """How notes and reference displays name a clinician."""
    return (
        f"Dr. {c.given} {c.family}"
        if c.suffix in ("MD", "DO")
        else f"{c.given} {c.family}, {c.suffix}"
    )


def _with_unit(text: str, unit: str) -> str:
    shown = cat.UNIT_TEXT.get(unit, unit)
    return f"{text} {shown}" if shown else text


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
