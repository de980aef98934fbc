// The clinician's page. The session of this tab was put in sessionStorage by the sign-in page
// (/callback) of this tab — per tab, so two tabs launched for two patients never cross — and is
// sent as a header, never a cookie. It is never taken from the URL: a link carrying someone
// else's session does nothing. The patient header lets the server refuse a call for another
// patient (409 patient_mismatch).
import {el, medicationGroups, medicationTimeline, problemLists, trendChart, trendGroups} from "./visuals.js";

const $ = (id) => document.getElementById(id);
const SESSION = sessionStorage.getItem("chartcite-session");
const state = {ctx: null, patient: null, history: [], current: null, resources: new Map(), opener: null, askable: false, asking: false};

if (location.hash) { history.replaceState(null, "", location.pathname + location.search); }

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

function headers() {
  const h = {"Content-Type": "application/json"};
  if (SESSION) { h["X-Chartcite-Session"] = SESSION; }
  const patient = sessionStorage.getItem("chartcite-patient");
  if (patient) { h["X-Chartcite-Patient"] = patient; }
  return h;
}

async function call(path, options) {
  const resp = await fetch(path, Object.assign({credentials: "omit", headers: headers()}, options || {}));
  if (resp.ok && (resp.headers.get("content-type") || "").includes("text/event-stream")) { return resp; }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = body.error || {};
    throw new ApiError(resp.status, err.code || "http_" + resp.status, err.message || "HTTP " + resp.status);
  }
  return body;
}

// -- patient banner and EHR styling --------------------------------------------------------

function ageOn(birth, today) {
  const b = new Date(birth + "T00:00:00Z");
  let age = today.getUTCFullYear() - b.getUTCFullYear();
  const m = today.getUTCMonth() - b.getUTCMonth();
  if (m < 0 || (m === 0 && today.getUTCDate() < b.getUTCDate())) { age--; }
  return age;
}

function mrnOf(patient) {
  for (const id of (patient && patient.identifier) || []) {
    const codes = ((id.type && id.type.coding) || []).map((c) => c.code);
    if (codes.includes("MR") || /\bMRN\b/i.test((id.type && id.type.text) || "")) { return id.value; }
  }
  return null;
}

const SEX = {male: "Male", female: "Female", other: "Other", unknown: "Unknown"};

function renderBanner(ctx, patientResource) {
  const banner = $("banner");
  banner.dataset.patient = ctx.patient;
  const b = ctx.banner;
  if (ctx.need_patient_banner === false) {
    // The EHR shows its own banner around the frame: ours would only repeat it.
    banner.replaceChildren(el("span", {class: "muted", text: "Patient shown in the EHR's banner"}));
    banner.dataset.hidden = "ehr";
    return;
  }
  if (!b || !b.name) {
    // Before the first sync stores the Patient resource, or when the EHR did not grant it.
    const id = ctx.patient.replace(/^Patient\//, "");
    banner.replaceChildren(el("span", {class: "name", id: "banner-name", text: "Patient " + id}),
      el("span", {class: "muted", text: state.synced ? "(demographics not shared with chartcite)" : "(loading the record…)"}));
    return;
  }
  const fields = [el("span", {class: "name", id: "banner-name", text: b.name})];
  if (b.gender) { fields.push(el("span", {class: "field", id: "banner-sex"}, el("b", {text: "Sex"}), SEX[b.gender] || b.gender)); }
  if (b.birthDate) {
    fields.push(el("span", {class: "field", id: "banner-age"}, el("b", {text: "Age"}), `${ageOn(b.birthDate, new Date())} y`));
    fields.push(el("span", {class: "field", id: "banner-dob"}, el("b", {text: "Born"}), b.birthDate));
  }
  const mrn = b.mrn || mrnOf(patientResource);
  if (mrn) { fields.push(el("span", {class: "field", id: "banner-mrn"}, el("b", {text: "MRN"}), mrn)); }
  banner.replaceChildren(...fields);
}

function luminance(hex) {
  const m = hex.match(/^#([0-9a-f]{6}|[0-9a-f]{3})$/i);
  if (!m) { return null; }
  const h = m[1].length === 3 ? m[1].replace(/./g, "$&$&") : m[1];
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16) / 255).map((c) => (c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4)));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
export function contrast(a, b) {
  const la = luminance(a), lb = luminance(b);
  if (la === null || lb === null) { return 0; }
  return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
}

/** The EHR's smart_style_url (SMART App Launch: "Styling"): colours only where they keep 4.5:1. */
async function applyStyle(url) {
  if (!url) { return; }
  let style;
  try {
    if (new URL(url, location.href).origin !== location.origin) { return; } // CSP connect-src 'self'
    const resp = await fetch(url, {credentials: "omit"});
    if (!resp.ok) { return; }
    style = await resp.json();
  } catch (e) { return; }
  const root = document.documentElement.style;
  const text = style.color_text, bg = style.color_background, accent = style.color_highlight;
  if (contrast(text, "#ffffff") >= 4.5 && contrast(text, bg || "#f6f8fa") >= 4.5) { root.setProperty("--cc-text", text); }
  if (bg && contrast(text || "#1f2328", bg) >= 4.5) { root.setProperty("--cc-bg", bg); }
  if (accent && contrast(accent, "#ffffff") >= 4.5) { root.setProperty("--cc-accent", accent); }
  if (style.color_error && contrast(style.color_error, "#ffffff") >= 4.5) { root.setProperty("--cc-error", style.color_error); }
  if (style.color_success && contrast(style.color_success, "#ffffff") >= 4.5) { root.setProperty("--cc-success", style.color_success); }
  const safe = (v) => typeof v === "string" && /^[\w\s,"'-]{1,120}$/.test(v);
  if (safe(style.font_family_body)) { root.setProperty("--cc-font", style.font_family_body); }
  if (safe(style.font_family_heading)) { root.setProperty("--cc-heading-font", style.font_family_heading); }
  if (/^\d{1,2}(\.\d+)?px$/.test(style.dim_font_size || "") && parseFloat(style.dim_font_size) >= 13) { root.setProperty("--cc-font-size", style.dim_font_size); }
  if (/^\d{1,2}px$/.test(style.dim_border_radius || "")) { root.setProperty("--cc-radius", style.dim_border_radius); }
  document.documentElement.dataset.ehrStyle = "applied";
}

// -- sync ----------------------------------------------------------------------------------

function setAskable(on) {
  state.askable = on;
  $("ask").disabled = !on || state.asking;
}

function renderSync(run, background) {
  const status = $("sync-status");
  status.dataset.status = run.status;
  const counts = Object.entries(run.counts || {}).filter(([k]) => /^[A-Z]/.test(k) && k !== "Binary");
  const total = counts.reduce((n, [, v]) => n + v, 0);
  const m = /(\d+)\s*\/\s*(\d+)/.exec(run.phase || "");
  const bar = $("sync-progress");
  const answerable = Boolean(run.answerable_at) || run.status === "done" || run.status === "partial";
  if (run.status === "running") {
    if (m) { bar.max = Number(m[2]) || 1; bar.value = Number(m[1]); } else { bar.removeAttribute("value"); }
    bar.hidden = background;
    const what = /index/i.test(run.phase || "") ? "making the chart searchable" : "copying the chart from the EHR";
    status.textContent = background ? "Checking the EHR for changes…"
      : `${answerable ? "Ready to ask — still " : ""}${what}${m ? ` (${Math.round((100 * Number(m[1])) / (Number(m[2]) || 1))}%)` : ""}…`;
  } else {
    bar.hidden = true;
    const when = run.finished_at || run.heartbeat_at;
    const at = when ? new Date(when).toLocaleString([], {dateStyle: "medium", timeStyle: "short"}) : "";
    const incremental = run.mode && run.mode !== "full";
    status.textContent = run.status === "done"
      ? (incremental ? `Up to date · checked ${at}${total ? ` · ${total} new or changed records` : " · no changes"}` : `Up to date · copied ${at} · ${total} records`)
      : run.status === "partial" ? `Partly copied (${total} records): some record types could not be read`
      : `The chart could not be copied: ${run.error || "sync failed"}`;
  }
  $("sync-counts").replaceChildren(...counts.sort((a, b) => b[1] - a[1]).map(([k, v]) => el("li", {"data-type": k}, el("b", {text: String(v)}), " " + typeLabel(k, v !== 1))));
  const errors = Object.entries(run.errors || {});
  $("sync-errors").replaceChildren(...errors.map(([kind, why]) => el("li", {"data-kind": kind, text: `${typeLabel(kind, true)}: ${why}`})));
  $("sync-errors").hidden = errors.length === 0;
  $("sync-box").classList.toggle("compact", run.status === "done" && (background || !errors.length));
  if (answerable) { setAskable(true); }
}

async function pollSync(id, background) {
  for (;;) {
    const run = await call("/api/sync/" + id);
    renderSync(run, background);
    // The banner as soon as the Patient resource is in the chart copy (before indexing ends).
    if (!state.bannerShown && run.counts && run.counts.Patient) { await refreshBanner(); }
    if (run.status !== "running") { return run; }
    await new Promise((r) => setTimeout(r, 600));
  }
}

// -- citations, statements and the side panel ----------------------------------------------

const TYPES = {
  Observation: ["Result", "Results"], MedicationRequest: ["Prescription", "Prescriptions"], Condition: ["Problem", "Problems"],
  AllergyIntolerance: ["Allergy", "Allergies"], Immunization: ["Immunization", "Immunizations"], Procedure: ["Procedure", "Procedures"],
  Encounter: ["Visit", "Visits"], DocumentReference: ["Note", "Notes"], Patient: ["Patient", "Patients"], Medication: ["Medication", "Medications"],
  DiagnosticReport: ["Report", "Reports"], CarePlan: ["Care plan", "Care plans"], Practitioner: ["Clinician", "Clinicians"],
};
function typeLabel(type, plural) { const t = TYPES[type]; return t ? t[plural ? 1 : 0] : type; }

function bindChip(node, ref) {
  node.dataset.ref = ref;
  node.setAttribute("aria-haspopup", "dialog");
  node.addEventListener("click", (ev) => { ev.preventDefault(); openPanel(ref, node); });
  node.addEventListener("keydown", (ev) => { if (ev.key === " ") { ev.preventDefault(); openPanel(ref, node); } });
}

function chipFor(ref, info) {
  const [type] = ref.split("/");
  const c = info || {};
  const a = el("a", {href: "#", class: "cite", role: "button", title: [typeLabel(type), c.display, c.value, c.date].filter(Boolean).join(" · ")});
  a.append(el("span", {class: "t", text: typeLabel(type)}), el("span", {class: "d", text: c.display || "source"}));
  if (c.date) { a.append(el("span", {class: "w", text: c.date})); }
  bindChip(a, ref);
  return a;
}

function noticeKind(text) {
  if (/outside this session's access|not granted|did not grant/i.test(text)) { return "access"; }
  if (/^no\b|nothing found|not found in|\bnone (found|recorded)/i.test(text)) { return "empty"; }
  return "info";
}

function statementItem(s, citations) {
  const li = el("li", {class: s.kind || "fact"});
  if (s.kind === "notice") { li.classList.add(noticeKind(s.text)); li.dataset.notice = noticeKind(s.text); }
  li.append(s.text);
  if (s.citations && s.citations.length) {
    const chips = el("span", {class: "chips"});
    for (const ref of s.citations) { chips.append(chipFor(ref, citations[ref])); }
    li.append(chips);
  }
  return li;
}

async function load(ref) {
  if (state.resources.has(ref)) { return state.resources.get(ref); }
  const resource = await call("/api/resources/" + ref);
  state.resources.set(ref, resource);
  return resource;
}

async function loadAll(refs) {
  const queue = refs.filter((r) => !state.resources.has(r)).slice(0, 120);
  const workers = Array.from({length: 4}, async () => {
    while (queue.length) { const ref = queue.shift(); try { await load(ref); } catch (e) { /* shown without status */ } }
  });
  await Promise.all(workers);
  return state.resources;
}

const concept = (cc) => cc && (cc.text || ((cc.coding || []).find((c) => c.display) || {}).display || ((cc.coding || [])[0] || {}).code);
const quantity = (q) => q && [q.value, q.unit || q.code].filter((v) => v !== undefined && v !== null).join(" ");
const dateOf = (v) => (typeof v === "string" ? v.replace("T", " ").replace(/:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$/, "") : v);
function range(x) {
  if (x.text) { return x.text; }
  if (x.low && x.high) { return `${quantity(x.low)} – ${quantity(x.high)}`; }
  return x.high ? `up to ${quantity(x.high)}` : x.low ? `from ${quantity(x.low)}` : "";
}
function valueOf(r) {
  if (r.valueQuantity) { return quantity(r.valueQuantity); }
  if (r.valueCodeableConcept) { return concept(r.valueCodeableConcept); }
  for (const k of ["valueString", "valueBoolean", "valueInteger"]) { if (r[k] !== undefined) { return String(r[k]); } }
  if (r.component) { return r.component.map((c) => `${concept(c.code)} ${quantity(c.valueQuantity) || concept(c.valueCodeableConcept) || ""}`).join("; "); }
  return null;
}

/** The resource as a clinician reads it: a few labelled fields per type. */
function readable(r) {
  const rows = [];
  const add = (k, v) => { if (v !== null && v !== undefined && v !== "") { rows.push([k, String(v)]); } };
  switch (r.resourceType) {
    case "Observation":
      add("Test", concept(r.code)); add("Result", valueOf(r));
      add("Interpretation", (r.interpretation || []).map(concept).join(", "));
      add("Reference range", (r.referenceRange || []).map(range).join("; "));
      add("When", dateOf(r.effectiveDateTime || (r.effectivePeriod && r.effectivePeriod.start) || r.issued));
      add("Category", (r.category || []).map(concept).join(", ")); add("Status", r.status);
      break;
    case "MedicationRequest":
      add("Medication", concept(r.medicationCodeableConcept) || (r.medicationReference && r.medicationReference.display));
      add("Status", r.status); add("Prescribed", dateOf(r.authoredOn));
      add("Dosage", (r.dosageInstruction || []).map((d) => d.text).filter(Boolean).join("; "));
      add("Prescriber", r.requester && r.requester.display); add("Intent", r.intent);
      break;
    case "Condition":
      add("Problem", concept(r.code)); add("Clinical status", concept(r.clinicalStatus));
      add("Verification", concept(r.verificationStatus)); add("Onset", dateOf(r.onsetDateTime || r.onsetString));
      add("Resolved", dateOf(r.abatementDateTime || r.abatementString)); add("Recorded", dateOf(r.recordedDate));
      break;
    case "AllergyIntolerance":
      add("Substance", concept(r.code)); add("Clinical status", concept(r.clinicalStatus)); add("Criticality", r.criticality);
      add("Reactions", (r.reaction || []).flatMap((x) => (x.manifestation || []).map(concept)).join(", "));
      add("Recorded", dateOf(r.recordedDate));
      break;
    case "Immunization":
      add("Vaccine", concept(r.vaccineCode)); add("Given", dateOf(r.occurrenceDateTime)); add("Status", r.status);
      break;
    case "Procedure":
      add("Procedure", concept(r.code)); add("When", dateOf(r.performedDateTime || (r.performedPeriod && r.performedPeriod.start))); add("Status", r.status);
      break;
    case "Encounter":
      add("Visit", (r.type || []).map(concept).join(", ") || (r.class && r.class.display)); add("Start", dateOf(r.period && r.period.start));
      add("End", dateOf(r.period && r.period.end)); add("Reason", (r.reasonCode || []).map(concept).join(", ")); add("Status", r.status);
      break;
    case "DocumentReference":
      add("Note", concept(r.type) || r.description); add("Date", dateOf(r.date)); add("Status", r.status);
      break;
    default:
      add("Code", concept(r.code)); add("Status", r.status); add("Date", dateOf(r.date || r.effectiveDateTime || r.recordedDate));
  }
  return rows;
}

async function openPanel(ref, opener) {
  const panel = $("panel");
  if (state.opener && state.opener !== opener) { state.opener.setAttribute("aria-expanded", "false"); }
  state.opener = opener;
  if (opener) { opener.setAttribute("aria-expanded", "true"); }
  const [type] = ref.split("/");
  const info = (state.current && state.current.citations[ref]) || {};
  $("panel-title").textContent = `${typeLabel(type)}: ${info.display || ref}`;
  $("panel-body").replaceChildren(el("p", {class: "muted", text: "Loading the source…"}));
  $("panel-json").textContent = "";
  panel.dataset.ref = ref;
  panel.dataset.state = "loading";
  panel.hidden = false;
  document.body.classList.add("panel-open");
  panel.focus();
  try {
    const r = await load(ref);
    if (panel.dataset.ref !== ref) { return; }
    const dl = el("dl", {id: "panel-fields"});
    for (const [k, v] of readable(r)) { dl.append(el("dt", {text: k}), el("dd", {class: k === "Result" ? "big" : null, text: v})); }
    $("panel-body").replaceChildren(dl, el("p", {class: "meta", text: `${r.resourceType}/${r.id}${r.meta && r.meta.lastUpdated ? " · updated " + dateOf(r.meta.lastUpdated) : ""}`}));
    $("panel-json").textContent = JSON.stringify(r, null, 2);
    panel.dataset.state = "loaded";
    panel.dataset.type = r.resourceType;
  } catch (e) {
    const msg = e.status === 403 ? "This record is outside your access (the EHR did not grant that scope)."
      : e.status === 404 ? "This record is no longer in the chart copy." : e.message;
    $("panel-body").replaceChildren(el("p", {class: e.status === 403 ? "muted" : "error", text: msg}));
    panel.dataset.state = "error";
  }
}

function closePanel() {
  const panel = $("panel");
  if (panel.hidden) { return; }
  panel.hidden = true;
  document.body.classList.remove("panel-open");
  if (state.opener) { state.opener.setAttribute("aria-expanded", "false"); if (state.opener.isConnected) { state.opener.focus(); } }
  state.opener = null;
}

// -- answers -------------------------------------------------------------------------------

function showStatus(text, isError) {
  const s = $("ask-status");
  s.textContent = text;
  s.className = "status" + (isError ? " error" : "");
}

function startAnswer(question) {
  $("answer").hidden = false;
  $("answer").setAttribute("aria-busy", "true");
  $("answer").dataset.state = "streaming";
  $("answer-question").textContent = question;
  $("visuals").replaceChildren();
  $("statements").replaceChildren();
  $("statements-more").replaceChildren();
  $("details").hidden = true;
  $("answer-meta").textContent = "";
  closePanel();
}

/** Statements that a picture now shows: every one of their citations is drawn in it. */
function absorbed(statement, drawn) {
  return statement.kind !== "notice" && statement.citations.length > 0 && statement.citations.every((r) => drawn.has(r));
}

async function renderAnswer(answer) {
  if (answer.patient && answer.patient !== state.patient) {
    // Never show an answer about someone other than the patient in the banner.
    $("statements").replaceChildren(el("li", {class: "notice info", text: "This answer is about another patient than the one in the banner, so it is not shown. Relaunch chartcite from the EHR."}));
    $("answer").dataset.state = "patient_mismatch";
    return;
  }
  state.current = answer;
  const cites = answer.citations || {};
  const trends = trendGroups(cites);
  const drawnPoints = new Set(trends.flatMap((g) => g.points.map((p) => p.ref)));
  const figures = trends.map((g) => trendChart(g, bindChip));
  // Citations carry status and dates; a resource is fetched only when its citation lacks them.
  const grouped = Object.keys(cites).filter((r) => /^(MedicationRequest|Condition)\//.test(r));
  const needs = grouped.filter((r) => !cites[r].status);
  if (needs.length) { await loadAll(needs); }
  if (state.current !== answer) { return; }
  const meds = medicationGroups(cites, state.resources);
  const drawn = new Set(drawnPoints);
  if (meds.length >= 2) {
    figures.push(medicationTimeline(meds, bindChip));
    meds.forEach((g) => g.orders.forEach((o) => drawn.add(o.ref)));
  }
  const problems = problemLists(cites, state.resources, bindChip);
  if (problems && grouped.some((r) => r.startsWith("Condition/"))) {
    figures.push(problems);
    Object.keys(cites).filter((r) => r.startsWith("Condition/")).forEach((r) => drawn.add(r));
  }
  const main = [], more = [];
  for (const s of answer.statements) {
    // A single result drawn as a point goes under "each result"; a trend sentence (several
    // points) stays above the chart as its reading.
    const point = s.citations.length === 1 && drawnPoints.has(s.citations[0]);
    (absorbed(s, drawn) && (point || !s.citations.some((r) => drawnPoints.has(r))) ? more : main).push(s);
  }
  $("visuals").replaceChildren(...figures);
  $("statements").replaceChildren(...main.map((s) => statementItem(s, cites)));
  $("statements-more").replaceChildren(...more.map((s) => statementItem(s, cites)));
  $("details").hidden = more.length === 0;
  $("details-summary").textContent = `Each statement the pictures show (${more.length})`;
  if (!answer.statements.length) {
    $("statements").replaceChildren(el("li", {class: "notice empty", "data-notice": "empty", text: "No record in this patient's chart answers this question."}));
  }
  const conf = typeof answer.confidence === "number" ? (answer.confidence >= 0.75 ? "high" : answer.confidence >= 0.4 ? "medium" : "low") : null;
  const n = Object.keys(cites).length;
  $("answer-meta").textContent = [`${n} cited record${n === 1 ? "" : "s"}`, conf && `confidence ${conf}`,
    answer.mode === "llm" ? "written by the language model from the cited records" : "drawn directly from the cited records",
    answer.removed_statements ? `${answer.removed_statements} unsupported statement${answer.removed_statements === 1 ? "" : "s"} removed` : null].filter(Boolean).join(" · ");
  $("answer").dataset.state = "done";
  $("answer").dataset.answerId = answer.answer_id || "";
}

/** POST /api/ask/stream when the server has it (evidence, statements, done), else POST /api/ask. */
async function ask(question) {
  const body = JSON.stringify({question});
  let resp;
  try {
    resp = await call("/api/ask/stream", {method: "POST", body});
  } catch (e) {
    if (e.status === 404 || e.status === 405) { return call("/api/ask", {method: "POST", body}); }
    throw e;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", citations = {}, doneEvent = null;
  const statements = [];
  for (;;) {
    const {value, done} = await reader.read();
    if (done) { break; }
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = (/^event: (.*)$/m.exec(block) || [])[1] || "message";
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      const payload = data ? JSON.parse(data) : {};
      if (event === "evidence") {
        if (payload.patient && payload.patient !== state.patient) { reader.cancel(); throw new ApiError(409, "patient_mismatch", "the answer was about another patient"); }
        citations = payload.citations || {};
        showStatus(`Found ${payload.retrieved} record${payload.retrieved === 1 ? "" : "s"} — writing the answer…`);
      } else if (event === "statement") {
        statements.push(payload);
        $("statements").append(statementItem(payload, citations));
        showStatus(`${statements.length} statement${statements.length === 1 ? "" : "s"} so far…`);
      } else if (event === "done") {
        doneEvent = payload;
      } else if (event === "error") {
        throw new ApiError(500, payload.code, payload.message);
      }
    }
  }
  if (!doneEvent) { throw new ApiError(502, "stream_cut", "the answer was cut off: ask again"); }
  // The stored answer carries its patient: checked against the banner before it stays on screen.
  return call("/api/answers/" + doneEvent.answer_id);
}

const HISTORY_KEY = () => "chartcite-history:" + (SESSION || "");

function renderHistory() {
  const items = state.history;
  $("history-box").hidden = items.length === 0;
  $("history").replaceChildren(...items.map((h, i) => {
    const b = el("button", {type: "button", text: h.question});
    b.addEventListener("click", () => showFromHistory(i));
    return el("li", {"aria-current": state.current && state.current.answer_id === h.answer_id ? "true" : null},
      b, el("span", {class: "when", text: new Date(h.at).toLocaleTimeString([], {timeStyle: "short"}) + (h.summary ? " · " + h.summary : "")}));
  }).reverse());
}

async function showFromHistory(i) {
  const h = state.history[i];
  startAnswer(h.question);
  try {
    const answer = h.answer || (h.answer = await call("/api/answers/" + h.answer_id));
    await renderAnswer(answer);
  } catch (e) { showStatus(e.message, true); }
  $("answer").setAttribute("aria-busy", "false");
  renderHistory();
}

function summary(answer) {
  const facts = answer.statements.filter((s) => s.kind !== "notice").length;
  if (facts) { return `${facts} statement${facts === 1 ? "" : "s"}`; }
  const notice = answer.statements.find((s) => s.kind === "notice");
  return notice ? (noticeKind(notice.text) === "access" ? "outside your access" : "nothing found") : "nothing found";
}

async function submit(ev) {
  if (ev) { ev.preventDefault(); }
  const q = $("question").value.trim();
  if (!q) {
    showStatus("Type a question first (or pick one of the examples).", true);
    $("question").setAttribute("aria-invalid", "true");
    $("question").focus();
    return;
  }
  if (!state.askable || state.asking) { return; }
  $("question").removeAttribute("aria-invalid");
  state.asking = true;
  $("ask").disabled = true;
  showStatus("Searching the chart…");
  startAnswer(q);
  try {
    const answer = await ask(q);
    await renderAnswer(answer);
    showStatus("");
    if (answer.answer_id && answer.patient === state.patient) {
      state.history.push({question: q, answer_id: answer.answer_id, at: Date.now(), summary: summary(answer), answer});
      sessionStorage.setItem(HISTORY_KEY(), JSON.stringify(state.history.map(({answer: _a, ...h}) => h)));
      renderHistory();
    }
  } catch (e) {
    $("answer").dataset.state = "error";
    if (e.status === 403) { $("statements").replaceChildren(el("li", {class: "notice access", "data-notice": "access", text: e.message})); showStatus(""); }
    else if (e.code === "not_synced") { showStatus("The chart is still being copied: ask again in a moment.", true); }
    else { showStatus(e.message, true); }
  }
  $("answer").setAttribute("aria-busy", "false");
  state.asking = false;
  setAskable(state.askable);
}

function examples(ctx) {
  const types = new Set(ctx.readable_types || []);
  const out = [];
  if (types.has("Observation") && types.has("MedicationRequest")) { out.push("What was this patient's HbA1c trend over the last 18 months, and which medications were previously prescribed?"); }
  else if (types.has("Observation")) { out.push("What was this patient's HbA1c trend over the last 18 months?"); }
  if (types.has("Condition")) { out.push("What are the active problems?"); }
  if (types.has("MedicationRequest")) { out.push("Which medications is the patient taking now?"); }
  if (types.has("Observation")) { out.push("Blood pressure over the last year?"); }
  if (types.has("AllergyIntolerance")) { out.push("Any allergies?"); }
  $("examples").replaceChildren(...out.slice(0, 5).map((q) => {
    const b = el("button", {type: "button", text: q.length > 60 ? q.slice(0, 57).replace(/\s+\S*$/, "") + "…" : q, title: q});
    b.addEventListener("click", () => { $("question").value = q; submit(); });
    return b;
  }));
}

// -- start ---------------------------------------------------------------------------------

async function start() {
  let ctx;
  try { ctx = await call("/api/context"); } catch (e) {
    $("banner").replaceChildren(el("span", {class: "error", text: "Not launched: open chartcite from the EHR."}));
    $("sync-status").textContent = e.message;
    $("sync-status").dataset.status = "failed";
    return;
  }
  state.ctx = ctx;
  state.patient = ctx.patient;
  sessionStorage.setItem("chartcite-patient", ctx.patient);
  $("user").textContent = ctx.fhirUser ? "Signed in as " + ctx.fhirUser.replace(/^.*\/(?=[^/]+\/[^/]+$)/, "") : "";
  renderBanner(ctx, null);
  applyStyle(ctx.smart_style_url);
  examples(ctx);
  try { state.history = JSON.parse(sessionStorage.getItem(HISTORY_KEY()) || "[]"); } catch (e) { state.history = []; }
  renderHistory();
  const last = ctx.last_sync;
  const ready = last && (last.answerable_at || last.status === "done" || last.status === "partial");
  $("sync-box").dataset.firstLaunch = ready ? "false" : "true";
  if (ready) { renderSync(last, true); }
  try {
    const run = await call("/api/sync", {method: "POST", body: "{}"});
    await pollSync(run.id, Boolean(ready));
  } catch (e) {
    $("sync-status").textContent = "Sync: " + e.message;
    if (!ready) { $("sync-status").dataset.status = "failed"; }
  }
  state.synced = true;
  await refreshBanner();
}

async function refreshBanner() {
  const again = await call("/api/context").catch(() => state.ctx);
  if (!again.banner || !again.banner.name) { renderBanner(again, null); return; }
  let patient = null;
  if ((again.readable_types || []).includes("Patient")) {
    state.resources.delete(state.patient);
    patient = await load(state.patient).catch(() => null);
  }
  renderBanner(again, patient);
  state.bannerShown = true;
}

$("ask-form").addEventListener("submit", submit);
$("question").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); submit(); } });
$("panel-close").addEventListener("click", closePanel);
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") { closePanel(); } });
start();
