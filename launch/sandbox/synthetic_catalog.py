"""Code tables and name lists for the synthetic patient generator (`synthetic.py`).

Terminologies: SNOMED CT (conditions, procedures, allergy manifestations), LOINC (observations,
note types), RxNorm (medications, drug allergies), CVX (vaccines), UCUM (units). The codes are
real ones, most of them as Synthea's modules and the eCQM value sets use them; displays are their
names. Everything person-like here (names, streets, phone numbers in the fictional 555-01xx range,
NPIs starting 9999) is invented.
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
MEDREQ_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"


@dataclass(frozen=True)
class Drug:
    """One orderable product and the way it is prescribed."""

    rxcui: str
    display: str  # the RxNorm name
    name: str  # how a clinician writes it in a note
    sig: str
    frequency: int = 1
    period: float = 1
    period_unit: str = "d"
    dose: float = 1
    dose_unit: str = "tablet"
    prn: bool = False
    days: int | None = None  # fixed course length (antibiotics)


# fmt: off
DRUGS: dict[str, Drug] = {
    "metformin_1": Drug("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
                        "metformin ER 500 mg", "Take 1 tablet by mouth once daily with the evening meal"),
    "metformin_2": Drug("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
                        "metformin ER 1000 mg (2 x 500 mg)",
                        "Take 2 tablets by mouth once daily with the evening meal", dose=2),
    "canagliflozin": Drug("1373463", "canagliflozin 100 MG Oral Tablet", "canagliflozin 100 mg",
                          "Take 1 tablet by mouth every morning before breakfast"),
    "liraglutide": Drug("897122", "3 ML liraglutide 6 MG/ML Pen Injector", "liraglutide 1.2 mg",
                        "Inject 1.2 mg subcutaneously once daily", dose=1.2, dose_unit="mg"),
    "glargine": Drug("261551", "insulin glargine 100 UNT/ML Injectable Solution",
                     "insulin glargine 12 units", "Inject 12 units subcutaneously at bedtime",
                     dose=12, dose_unit="U"),
    "lisinopril_10": Drug("314076", "lisinopril 10 MG Oral Tablet", "lisinopril 10 mg",
                          "Take 1 tablet by mouth once daily"),
    "lisinopril_20": Drug("314077", "lisinopril 20 MG Oral Tablet", "lisinopril 20 mg",
                          "Take 1 tablet by mouth once daily"),
    "losartan_50": Drug("979492", "losartan potassium 50 MG Oral Tablet", "losartan 50 mg",
                        "Take 1 tablet by mouth once daily"),
    "amlodipine_2_5": Drug("308136", "amlodipine 2.5 MG Oral Tablet", "amlodipine 2.5 mg",
                           "Take 1 tablet by mouth once daily"),
    "amlodipine_5": Drug("197361", "amlodipine 5 MG Oral Tablet", "amlodipine 5 mg",
                         "Take 1 tablet by mouth once daily"),
    "hctz_25": Drug("310798", "hydrochlorothiazide 25 MG Oral Tablet", "hydrochlorothiazide 25 mg",
                    "Take 1 tablet by mouth every morning"),
    "metoprolol_50": Drug("866436", "24 HR metoprolol succinate 50 MG Extended Release Oral Tablet",
                          "metoprolol succinate ER 50 mg", "Take 1 tablet by mouth once daily"),
    "atorvastatin_20": Drug("617310", "atorvastatin 20 MG Oral Tablet", "atorvastatin 20 mg",
                            "Take 1 tablet by mouth once daily at bedtime"),
    "atorvastatin_40": Drug("617311", "atorvastatin 40 MG Oral Tablet", "atorvastatin 40 mg",
                            "Take 1 tablet by mouth once daily at bedtime"),
    "simvastatin_20": Drug("312961", "simvastatin 20 MG Oral Tablet", "simvastatin 20 mg",
                           "Take 1 tablet by mouth once daily in the evening"),
    "rosuvastatin_5": Drug("859424", "rosuvastatin calcium 5 MG Oral Tablet", "rosuvastatin 5 mg",
                           "Take 1 tablet by mouth once daily"),
    "aspirin_81": Drug("243670", "aspirin 81 MG Oral Tablet", "aspirin 81 mg",
                       "Take 1 tablet by mouth once daily"),
    "sertraline_50": Drug("312941", "sertraline 50 MG Oral Tablet", "sertraline 50 mg",
                          "Take 1 tablet by mouth once daily"),
    "sertraline_100": Drug("312938", "sertraline 100 MG Oral Tablet", "sertraline 100 mg",
                           "Take 1 tablet by mouth once daily"),
    "albuterol": Drug("745752",
                      "NDA021457 200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler [ProAir]",
                      "albuterol HFA 90 mcg/actuation inhaler",
                      "Inhale 2 puffs every 4 to 6 hours as needed for wheezing or shortness of breath",
                      frequency=1, period=4, period_unit="h", dose=2, dose_unit="puff", prn=True),
    "fluticasone": Drug("896019",
                        "60 ACTUAT fluticasone propionate 0.05 MG/ACTUAT Dry Powder Inhaler [Flovent]",
                        "fluticasone propionate 50 mcg/actuation inhaler",
                        "Inhale 1 puff twice daily; rinse mouth after use",
                        frequency=2, dose=1, dose_unit="puff"),
    "naproxen_220": Drug("849574", "naproxen sodium 220 MG Oral Tablet", "naproxen 220 mg",
                         "Take 1 tablet by mouth twice daily as needed for joint pain with food",
                         frequency=2, prn=True),
    "acetaminophen_325": Drug("313782", "acetaminophen 325 MG Oral Tablet", "acetaminophen 325 mg",
                              "Take 2 tablets by mouth every 6 hours as needed for pain",
                              period=6, period_unit="h", dose=2, prn=True),
    "acetaminophen_short": Drug("313782", "acetaminophen 325 MG Oral Tablet",
                                "acetaminophen 325 mg",
                                "Take 2 tablets by mouth every 6 hours as needed for back pain, "
                                "for up to 10 days", period=6, period_unit="h", dose=2, prn=True,
                                days=10),
    "amox_clav": Drug("562251", "amoxicillin 250 MG / clavulanate 125 MG Oral Tablet",
                      "amoxicillin-clavulanate 250/125 mg",
                      "Take 1 tablet by mouth three times daily for 10 days", frequency=3, days=10),
    "ciprofloxacin": Drug("309309", "ciprofloxacin 500 MG Oral Tablet", "ciprofloxacin 500 mg",
                          "Take 1 tablet by mouth twice daily for 3 days", frequency=2, days=3),
    "cefuroxime": Drug("309097", "cefuroxime 250 MG Oral Tablet", "cefuroxime 250 mg",
                       "Take 1 tablet by mouth twice daily for 7 days", frequency=2, days=7),
    # only in distinctive profiles
    "warfarin_5": Drug("855332", "warfarin sodium 5 MG Oral Tablet", "warfarin 5 mg",
                       "Take 1 tablet by mouth daily in the evening or as directed by the "
                       "anticoagulation clinic"),
    "allopurinol_100": Drug("197319", "allopurinol 100 MG Oral Tablet", "allopurinol 100 mg",
                            "Take 1 tablet by mouth once daily with plenty of water"),
    "biktarvy": Drug("1999667",
                     "bictegravir 50 MG / emtricitabine 200 MG / tenofovir alafenamide 25 MG Oral "
                     "Tablet", "bictegravir/emtricitabine/tenofovir alafenamide 50/200/25 mg",
                     "Take 1 tablet by mouth once daily"),
    "tacrolimus_1": Drug("1664463", "24 HR tacrolimus 1 MG Extended Release Oral Tablet",
                         "tacrolimus ER 1 mg", "Take 3 tablets by mouth once daily in the morning",
                         dose=3),
    "donepezil_memantine": Drug("1599803",
                                "24 HR donepezil hydrochloride 10 MG / memantine hydrochloride 28 "
                                "MG Extended Release Oral Capsule",
                                "memantine ER 28 mg / donepezil 10 mg",
                                "Take 1 capsule by mouth once daily in the evening",
                                dose_unit="capsule"),
    "furosemide_40": Drug("313988", "furosemide 40 MG Oral Tablet", "furosemide 40 mg",
                          "Take 1 tablet by mouth every morning"),
    "carvedilol_25": Drug("200033", "carvedilol 25 MG Oral Tablet", "carvedilol 25 mg",
                          "Take 1 tablet by mouth twice daily with food", frequency=2),
    "alendronate_10": Drug("904419", "alendronic acid 10 MG Oral Tablet", "alendronate 10 mg",
                           "Take 1 tablet by mouth every morning, 30 minutes before food, upright"),
    "epinephrine": Drug("1870230", "NDA020800 0.3 ML epinephrine 1 MG/ML Auto-Injector",
                        "epinephrine 0.3 mg auto-injector",
                        "Inject 0.3 mg into the outer thigh once as needed for anaphylaxis; "
                        "call 911", dose=0.3, dose_unit="mg", prn=True),
    "clopidogrel_75": Drug("309362", "clopidogrel 75 MG Oral Tablet", "clopidogrel 75 mg",
                           "Take 1 tablet by mouth once daily"),
    "nitroglycerin": Drug("705129", "nitroglycerin 0.4 MG/ACTUAT Mucosal Spray",
                          "nitroglycerin 0.4 mg spray",
                          "Spray 1 dose under the tongue every 5 minutes as needed for chest pain, "
                          "up to 3 doses", period=5, period_unit="min", dose_unit="spray",
                          prn=True),
    "ferrous_sulfate": Drug("310325", "ferrous sulfate 325 MG Oral Tablet",
                            "ferrous sulfate 325 mg", "Take 1 tablet by mouth once daily"),
}
# fmt: on


@dataclass(frozen=True)
class Problem:
    """A condition: SNOMED CT code, display, and how a note refers to it."""

    code: str
    display: str
    short: str


# fmt: off
PROBLEMS: dict[str, Problem] = {
    "t2dm": Problem("44054006", "Type 2 diabetes mellitus", "type 2 diabetes"),
    "prediabetes": Problem("714628002", "Prediabetes", "prediabetes"),
    "htn": Problem("38341003", "Hypertensive disorder, systemic arterial", "hypertension"),
    "hld": Problem("55822004", "Hyperlipidemia", "hyperlipidemia"),
    "ckd3": Problem("433144002", "Chronic kidney disease stage 3", "chronic kidney disease stage 3"),
    "asthma": Problem("195967001", "Asthma", "asthma"),
    "depression": Problem("35489007", "Depressive disorder", "depression"),
    "oa_knee": Problem("239873007", "Osteoarthritis of knee", "osteoarthritis of the knee"),
    "obesity": Problem("162864005", "Body mass index 30+ - obesity", "obesity"),
    "sinusitis": Problem("75498004", "Acute bacterial sinusitis", "acute bacterial sinusitis"),
    "bronchitis": Problem("10509002", "Acute bronchitis", "acute bronchitis"),
    "cystitis": Problem("307426000", "Acute infective cystitis", "acute cystitis"),
    "pharyngitis": Problem("195662009", "Acute viral pharyngitis", "acute viral pharyngitis"),
    "back_pain": Problem("278860009", "Chronic low back pain", "low back pain"),
}
# fmt: on


@dataclass(frozen=True)
class Lab:
    """An observation kind: LOINC code, display, UCUM unit, reference range, decimals."""

    loinc: str
    display: str
    unit: str
    category: str = "laboratory"
    low: float | None = None
    high: float | None = None
    decimals: int = 0
    label: str = ""  # how a note names it


# fmt: off
LABS: dict[str, Lab] = {
    "a1c": Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", high=5.6, decimals=1,
               label="Hemoglobin A1c"),
    "glucose": Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", low=70,
                   high=99, label="Glucose"),
    "chol": Lab("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", high=199,
                label="Total cholesterol"),
    "ldl": Lab("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
               "mg/dL", high=99, label="LDL cholesterol"),
    "hdl": Lab("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", low=40,
               label="HDL cholesterol"),
    "tg": Lab("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", high=149,
              label="Triglycerides"),
    "creatinine": Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", low=0.6,
                      high=1.2, decimals=2, label="Creatinine"),
    "egfr": Lab("62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in "
                "Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)",
                "mL/min/{1.73_m2}", low=60, label="eGFR"),
    "bun": Lab("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", low=7,
               high=20, label="BUN"),
    "sodium": Lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", low=135,
                  high=145, label="Sodium"),
    "potassium": Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", low=3.5,
                     high=5.1, decimals=1, label="Potassium"),
    "hgb": Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", low=12, high=17.5,
               decimals=1, label="Hemoglobin"),
    "wbc": Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", low=4,
               high=11, decimals=1, label="WBC"),
    "plt": Lab("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", low=150,
               high=400, label="Platelets"),
    "uacr": Lab("14959-1", "Microalbumin/Creatinine [Mass Ratio] in Urine", "mg/g", high=29,
                label="Urine albumin/creatinine ratio"),
    "inr": Lab("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", low=2,
               high=3, decimals=1, label="INR"),
    "urate": Lab("3084-1", "Urate [Mass/volume] in Serum or Plasma", "mg/dL", high=6.8,
                 decimals=1, label="Uric acid"),
    "cd4": Lab("24467-3", "CD3+CD4+ (T4 helper) cells [#/volume] in Blood", "/uL", low=500,
               label="CD4 count"),
    "ntprobnp": Lab("33762-6", "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in "
                    "Serum or Plasma", "pg/mL", high=125, label="NT-proBNP"),
    "tsh": Lab("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", low=0.4,
               high=4.5, decimals=2, label="TSH"),
    "phq9": Lab("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
                "{score}", category="survey", label="PHQ-9 score"),
    "phq2": Lab("55758-7", "Patient Health Questionnaire 2 item (PHQ-2) total score [Reported]",
                "{score}", category="survey", label="PHQ-2 score"),
    # vital signs
    "weight": Lab("29463-7", "Body weight", "kg", category="vital-signs", decimals=1,
                  label="Weight"),
    "height": Lab("8302-2", "Body height", "cm", category="vital-signs", decimals=1,
                  label="Height"),
    "bmi": Lab("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", category="vital-signs",
               decimals=1, label="BMI"),
    "hr": Lab("8867-4", "Heart rate", "/min", category="vital-signs", label="Heart rate"),
    "rr": Lab("9279-1", "Respiratory rate", "/min", category="vital-signs",
              label="Respiratory rate"),
    "temp": Lab("8310-5", "Body temperature", "Cel", category="vital-signs", decimals=1,
                label="Temperature"),
    "spo2": Lab("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%",
                category="vital-signs", low=95, label="SpO2"),
}
# fmt: on
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
# Some EHRs code the panel 55284-4 instead.
BP_PANEL_ALT = ("55284-4", "Blood pressure systolic and diastolic")
BP_SYSTOLIC = ("8480-6", "Systolic blood pressure")
BP_DIASTOLIC = ("8462-4", "Diastolic blood pressure")
# The same test coded with other LOINC codes, as other labs and EHR builds report it (the first of
# each is the one in LABS). Displays are the LOINC long common names.
_GFR = "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in"
# fmt: off
LOINC_VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "a1c": (("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
            ("17856-6", "Hemoglobin A1c/Hemoglobin.total in Blood by HPLC")),
    "glucose": (("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
                ("2339-0", "Glucose [Mass/volume] in Blood")),
    "ldl": (("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay"),
            ("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation")),
    "egfr": (("62238-1", f"{_GFR} Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)"),
             ("33914-3", f"{_GFR} Serum or Plasma by Creatinine-based formula (MDRD)"),
             ("98979-8", f"{_GFR} Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)")),
    "weight": (("29463-7", "Body weight"), ("3141-9", "Body weight Measured")),
}
# fmt: on

# A clinic laboratory's own order codes, sent as a first coding before the LOINC one.
LOCAL_LAB_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.5.1"
# fmt: off
LOCAL_LAB_CODES: dict[str, tuple[str, str]] = {
    "a1c": ("RPC-1042", "HGB A1C"), "glucose": ("RPC-1001", "GLUCOSE"),
    "chol": ("RPC-1210", "CHOLESTEROL, TOTAL"), "ldl": ("RPC-1213", "LDL CHOLESTEROL"),
    "hdl": ("RPC-1212", "HDL CHOLESTEROL"), "tg": ("RPC-1211", "TRIGLYCERIDES"),
    "creatinine": ("RPC-1005", "CREATININE"), "egfr": ("RPC-1006", "EGFR"),
    "bun": ("RPC-1004", "BUN"), "sodium": ("RPC-1002", "SODIUM"),
    "potassium": ("RPC-1003", "POTASSIUM"), "hgb": ("RPC-1301", "HEMOGLOBIN"),
    "wbc": ("RPC-1302", "WBC COUNT"), "plt": ("RPC-1303", "PLATELET COUNT"),
    "uacr": ("RPC-1410", "MICROALBUMIN/CREAT RATIO, URINE"),
}
# fmt: on

LIPID_PANEL = ("chol", "ldl", "hdl", "tg")
BASIC_PANEL = ("glucose", "sodium", "potassium", "bun", "creatinine", "egfr")
CBC_PANEL = ("hgb", "wbc", "plt")


UNIT_TEXT = {
    "mL/min/{1.73_m2}": "mL/min/1.73m2",
    "10*3/uL": "x10^3/uL",
    "Cel": "C",
    "m[IU]/L": "mIU/L",
    "{score}": "",
    "{INR}": "",
    "mm[Hg]": "mmHg",
}


@dataclass(frozen=True)
class Distinctive:
    """Something only one synthetic patient has: a condition, maybe its drugs and its lab."""

    key: str
    condition: Problem
    assessment: str  # the note's assessment line
    drugs: tuple[str, ...] = ()
    lab: str | None = None
    lab_start: float = 0.0
    lab_end: float = 0.0
    gender: str | None = None
    min_age: int = 40


# fmt: off
DISTINCTIVE: tuple[Distinctive, ...] = (
    Distinctive("afib", Problem("49436004", "Atrial fibrillation", "atrial fibrillation"),
                "rate controlled; anticoagulated with warfarin, INR goal 2.0-3.0",
                ("warfarin_5",), "inr", 2.3, 2.6, min_age=60),
    Distinctive("gout", Problem("90560007", "Gout", "gout"),
                "no flares since allopurinol was started; uric acid improving",
                ("allopurinol_100",), "urate", 9.1, 5.9, gender="male"),
    Distinctive("sarcoidosis", Problem("31541009", "Sarcoidosis", "pulmonary sarcoidosis"),
                "stage II pulmonary sarcoidosis, stable; followed by pulmonology, no current "
                "systemic treatment"),
    Distinctive("hiv", Problem("86406008", "Human immunodeficiency virus infection",
                               "HIV infection"),
                "well controlled on bictegravir/emtricitabine/tenofovir; viral load undetectable",
                ("biktarvy",), "cd4", 560, 710),
    Distinctive("kidney_transplant", Problem("161665007", "History of renal transplant",
                                             "history of kidney transplant"),
                "stable graft function on tacrolimus; transplant nephrology follow-up",
                ("tacrolimus_1",)),
    Distinctive("alzheimers", Problem("26929004", "Alzheimer's disease", "Alzheimer's disease"),
                "mild cognitive decline, living with daughter; continue memantine/donepezil",
                ("donepezil_memantine",), min_age=74),
    Distinctive("chf", Problem("88805009", "Chronic congestive heart failure",
                               "chronic heart failure"),
                "NYHA class II heart failure, euvolemic on furosemide and carvedilol",
                ("furosemide_40", "carvedilol_25"), "ntprobnp", 980, 410, min_age=60),
    Distinctive("osteoporosis", Problem("64859006", "Osteoporosis", "osteoporosis"),
                "on alendronate; repeat DXA in 2 years", ("alendronate_10",), gender="female",
                min_age=60),
    Distinctive("rheumatoid", Problem("69896004", "Rheumatoid arthritis", "rheumatoid arthritis"),
                "seropositive rheumatoid arthritis, followed by rheumatology; morning stiffness "
                "under 30 minutes"),
    Distinctive("peanut", Problem("91935009", "Allergy to peanuts", "peanut allergy"),
                "history of anaphylaxis to peanuts; epinephrine auto-injector renewed",
                ("epinephrine",)),
    Distinctive("cad", Problem("399211009", "History of myocardial infarction",
                               "history of myocardial infarction"),
                "no angina since stent placement; continue clopidogrel, nitroglycerin as needed",
                ("clopidogrel_75", "nitroglycerin"), min_age=55),
    Distinctive("hypothyroid", Problem("40930008", "Hypothyroidism", "hypothyroidism"),
                "subclinical; monitoring TSH without treatment for now", (), "tsh", 5.6, 6.8),
    Distinctive("parkinsons", Problem("49049000", "Parkinson's disease", "Parkinson's disease"),
                "mild resting tremor of the right hand, followed by neurology", min_age=60),
    Distinctive("copd", Problem("13645005", "Chronic obstructive lung disease", "COPD"),
                "moderate COPD, former smoker (40 pack-years); pulmonary rehab discussed",
                min_age=55),
    Distinctive("epilepsy", Problem("84757009", "Epilepsy", "epilepsy"),
                "seizure-free for 4 years, managed by neurology"),
    Distinctive("ms", Problem("24700007", "Multiple sclerosis", "multiple sclerosis"),
                "relapsing-remitting multiple sclerosis, no relapse in 3 years", gender="female"),
    Distinctive("psoriasis", Problem("9014002", "Psoriasis", "psoriasis"),
                "plaque psoriasis of elbows and scalp, topical therapy per dermatology"),
    Distinctive("glaucoma", Problem("23986001", "Glaucoma", "glaucoma"),
                "open-angle glaucoma, followed by ophthalmology; intraocular pressure stable",
                min_age=55),
    Distinctive("bph", Problem("266569009", "Benign prostatic hyperplasia",
                               "benign prostatic hyperplasia"),
                "nocturia twice nightly; urology follow-up", gender="male", min_age=58),
    Distinctive("migraine", Problem("37796009", "Migraine", "migraine"),
                "about two migraines a month; headache diary reviewed", gender="female"),
    Distinctive("celiac", Problem("396331005", "Celiac disease", "celiac disease"),
                "adherent to gluten-free diet; tissue transglutaminase antibody negative"),
    Distinctive("sleep_apnea", Problem("73430006", "Sleep apnea", "obstructive sleep apnea"),
                "using CPAP nightly, daytime sleepiness improved"),
    Distinctive("anemia", Problem("271737000", "Anemia", "iron deficiency anemia"),
                "hemoglobin recovering on oral iron", ("ferrous_sulfate",), "hgb", 10.1, 12.4),
    Distinctive("breast_cancer", Problem("254837009", "Malignant neoplasm of breast",
                                         "history of breast cancer"),
                "left breast cancer treated with lumpectomy and radiation 6 years ago; "
                "surveillance mammograms normal", gender="female", min_age=50),
    Distinctive("fibromyalgia", Problem("203082005", "Fibromyalgia", "fibromyalgia"),
                "widespread pain, sleep hygiene and graded exercise reviewed", gender="female"),
)
# fmt: on


@dataclass(frozen=True)
class Allergy:
    """A substance a patient may be allergic to and its usual reaction."""

    system: str
    code: str
    display: str
    category: str
    manifestation: tuple[str, str]  # SNOMED code, display
    criticality: str


# fmt: off
ALLERGIES: tuple[Allergy, ...] = (
    Allergy(RXNORM, "7980", "penicillin G", "medication", ("247472004", "Wheal"), "high"),
    Allergy(RXNORM, "10180", "sulfamethoxazole", "medication", ("271807003", "Eruption of skin"),
            "low"),
    Allergy(RXNORM, "2670", "codeine", "medication", ("422587007", "Nausea"), "low"),
    Allergy(RXNORM, "1191", "aspirin", "medication", ("402387002", "Allergic angioedema"), "high"),
    Allergy(SNOMED, "111088007", "Latex", "environment", ("271807003", "Eruption of skin"), "low"),
    Allergy(SNOMED, "256277009", "Grass pollen", "environment",
            ("878820003", "Rhinoconjunctivitis"), "low"),
    Allergy(SNOMED, "260147004", "House dust mite", "environment",
            ("878820003", "Rhinoconjunctivitis"), "low"),
    Allergy(SNOMED, "264287008", "Animal dander", "environment", ("418290006", "Itching"), "low"),
)
# fmt: on
PEANUT_ALLERGY = Allergy(SNOMED, "762952008", "Peanut", "food", ("39579001", "Anaphylaxis"), "high")

# Branded products (RxNorm SBD) some prescribers order instead of the generic (SCD) in DRUGS.
BRANDS: dict[str, tuple[str, str]] = {
    "atorvastatin_20": ("617318", "Lipitor 20 MG Oral Tablet"),
    "amlodipine_5": ("212549", "Norvasc 5 MG Oral Tablet"),
}

# Past problems, no longer active: (SNOMED code, display, clinicalStatus, years ago it abated).
# fmt: off
PAST_PROBLEMS: tuple[tuple[str, str, str, int], ...] = (
    ("34713006", "Vitamin D deficiency", "resolved", 2),
    ("202882003", "Plantar fasciitis", "resolved", 4),
    ("235595009", "Gastroesophageal reflux disease", "inactive", 3),
)
# fmt: on

# fmt: off
VACCINES: dict[str, tuple[str, str]] = {
    "flu_140": ("140", "Influenza, seasonal, injectable, preservative free"),
    "flu_141": ("141", "Influenza, seasonal, injectable"),
    "flu_150": ("150", "Influenza, injectable, quadrivalent, preservative free"),
    "td": ("113", "Td (adult) preservative free"),
    "tdap": ("115", "Tdap"),
    "pcv13": ("133", "Pneumococcal conjugate PCV 13"),
    "ppsv23": ("33", "pneumococcal polysaccharide vaccine, 23 valent"),
    "covid_208": ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    "covid_207": ("207", "COVID-19, mRNA, LNP-S, PF, 100 mcg/0.5mL dose"),
}
# fmt: on

# fmt: off
PROCEDURES: dict[str, tuple[str, str]] = {
    "med_rec": ("430193006", "Medication reconciliation"),
    "depression_screen": ("171207006", "Depression screening"),
    "retinal_exam": ("722161008", "Diabetic retinal eye exam"),
    "foot_exam": ("401191002", "Diabetic foot examination"),
    "ecg": ("29303009", "Electrocardiographic procedure"),
    "spirometry": ("23426006", "Measurement of respiratory function"),
    "colonoscopy": ("73761001", "Colonoscopy"),
    "mammography": ("71651007", "Mammography"),
    "chest_xray": ("399208008", "Plain X-ray of chest"),
    "echo": ("40701008", "Echocardiography"),
}
# fmt: on

# fmt: off
ENCOUNTER_TYPES: dict[str, tuple[str, str]] = {
    "annual": ("185349003", "Encounter for check up"),
    "followup": ("390906007", "Follow-up encounter"),
    "telehealth": ("390906007", "Follow-up encounter"),
    "acute": ("185345009", "Encounter for symptom"),
}
# fmt: on

# (problem key, chief complaint, history sentence, drug key or None)
# fmt: off
ACUTE_EPISODES: tuple[tuple[str, str, str, str | None], ...] = (
    ("sinusitis", "Facial pressure and nasal congestion for 12 days.",
     "reports purulent nasal discharge, maxillary pain and low-grade fever without improvement",
     "amox_clav"),
    ("bronchitis", "Cough for 9 days.",
     "reports productive cough and chest tightness after a cold; no hemoptysis", None),
    ("cystitis", "Burning with urination for 2 days.",
     "reports dysuria, urinary frequency and suprapubic discomfort; no flank pain or fever",
     "ciprofloxacin"),
    ("pharyngitis", "Sore throat for 3 days.",
     "reports sore throat, mild cough and rhinorrhea; rapid strep test negative", None),
    ("back_pain", "Low back pain after lifting boxes.",
     "reports aching lumbar pain without radiation, numbness or weakness", "acetaminophen_short"),
)
# fmt: on


@dataclass(frozen=True)
class Clinician:
    """A shared Practitioner."""

    id: str
    given: str
    family: str
    suffix: str
    specialty: str
    npi: str


# fmt: off
CLINICIANS: tuple[Clinician, ...] = (
    Clinician("prac-01", "Alan", "Whitfield", "MD", "Internal Medicine", "9999100011"),
    Clinician("prac-02", "Priya", "Raman", "MD", "Family Medicine", "9999100029"),
    Clinician("prac-03", "Tomas", "Lindqvist", "DO", "Internal Medicine", "9999100037"),
    Clinician("prac-04", "Grace", "Obi", "NP", "Family Medicine", "9999100045"),
    Clinician("prac-05", "Helena", "Marsh", "MD", "Endocrinology", "9999100052"),
    Clinician("prac-06", "Victor", "Osei", "MD", "Cardiology", "9999100060"),
)
# fmt: on
PCP_IDS = ("prac-01", "prac-02", "prac-03")

CLINIC = {
    "id": "org-01",
    "name": "Riverside Primary Care",
    "npi": "9999200018",
    "line": "400 Harbor View Drive",
    "city": "Springfield",
    "state": "MA",
    "postalCode": "01103",
    "phone": "(413) 555-0100",
}
SPECIALTY_CLINIC = {
    "id": "org-02",
    "name": "Riverside Specialty Associates",
    "npi": "9999200026",
    "line": "420 Harbor View Drive",
    "city": "Springfield",
    "state": "MA",
    "postalCode": "01103",
    "phone": "(413) 555-0101",
}

# fmt: off
GIVEN_FEMALE = ("Maria", "Linda", "Aisha", "Evelyn", "Naomi", "Rosa", "Hannah", "Mei", "Carmen",
                "Judith", "Grace", "Fatima", "Irene", "Lucia", "Beatrice", "Odette", "Priscilla",
                "Yolanda", "Ingrid", "Theresa")
GIVEN_MALE = ("James", "Robert", "Luis", "Samuel", "Daniel", "Kwame", "Henry", "Arjun", "Marcus",
              "Walter", "Ethan", "Tobias", "Rafael", "Dmitri", "Gordon", "Isaac", "Franklin",
              "Omar", "Felix", "Harold")
FAMILY = ("Alvarez", "Brennan", "Castellano", "Delacroix", "Eastwood", "Fairbanks", "Gallagher",
          "Haverford", "Iwasaki", "Jankowski", "Kowalczyk", "Lindgren", "Montague", "Nakamura",
          "Okonkwo", "Pemberton", "Quintero", "Rasmussen", "Sorensen", "Thibodeaux", "Underwood",
          "Valderrama", "Whitaker", "Yamamoto", "Zielinski", "Abernathy", "Beaumont",
          "Cartwright", "Dunleavy", "Ellsworth")
STREETS = ("Maple Street", "Orchard Lane", "Chestnut Avenue", "Birch Road", "Willow Court",
           "Harborview Drive", "Mill Pond Road", "Elm Terrace", "Summit Avenue", "Cedar Hollow",
           "Riverbend Way", "Lantern Hill Road")
TOWNS = (("Springfield", "MA", "01108"), ("Chicopee", "MA", "01013"),
         ("Holyoke", "MA", "01040"), ("Westfield", "MA", "01085"),
         ("Longmeadow", "MA", "01106"), ("Agawam", "MA", "01001"),
         ("Enfield", "CT", "06082"), ("Northampton", "MA", "01060"))
# fmt: on
