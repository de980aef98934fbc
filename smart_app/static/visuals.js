// Pictures of an answer where a clinician would rather look than read: a trend chart per lab or
// vital (points = the cited Observations), a medication timeline per ingredient (current vs
// past, first and last prescribed), problems split active / resolved. Everything is drawn from
// the answer's own citations, and the resources behind them come from the scope-checked
// resource endpoint (`load`), so a picture never shows what the answer did not cite.

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) { continue; }
    if (k === "class") { node.className = v; } else if (k === "text") { node.textContent = v; } else { node.setAttribute(k, v); }
  }
  for (const c of children) { if (c !== null && c !== undefined) { node.append(c); } }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) { node.setAttribute(k, String(v)); }
  for (const c of children) { if (c !== null && c !== undefined) { node.append(c); } }
  return node;
}

const DAY = 86400000;
const time = (d) => Date.parse(d && d.length === 10 ? d + "T00:00:00Z" : d);
const byDate = (a, b) => time(a.date) - time(b.date);

/** "9.6 %" → {value: 9.6, unit: "%"}; "120/80 mmHg" → {values: [120, 80], unit: "mmHg"}. */
export function numeric(text) {
  if (typeof text !== "string") { return null; }
  let m = text.trim().match(/^([<>]?=?)\s*(-?\d+(?:\.\d+)?)\s*(.*)$/);
  if (m && !m[3].startsWith("/")) { return {values: [Number(m[2])], unit: m[3].trim()}; }
  m = text.trim().match(/^(\d+(?:\.\d+)?)\s*\/\s*(\d+(?:\.\d+)?)\s*(.*)$/);
  if (m) { return {values: [Number(m[1]), Number(m[2])], unit: m[3].trim()}; }
  return null;
}

/** Observation citations with a number, grouped by what was measured (display + unit). */
export function trendGroups(citations) {
  const groups = new Map();
  for (const [ref, c] of Object.entries(citations)) {
    if (c.resource_type !== "Observation" || !c.date) { continue; }
    const n = numeric(c.value);
    if (!n) { continue; }
    const key = c.display + "|" + n.unit + "|" + n.values.length;
    if (!groups.has(key)) { groups.set(key, {display: c.display, unit: n.unit, points: []}); }
    groups.get(key).points.push({ref, date: c.date, values: n.values, label: c.value});
  }
  return [...groups.values()].filter((g) => g.points.length >= 2).map((g) => (g.points.sort(byDate), g));
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const step0 = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= step0) || step0;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 0.5; v += step) { ticks.push(Number(v.toFixed(6))); }
  return ticks;
}

function fmtDate(t) { return new Date(t).toISOString().slice(0, 10); }

/** An inline SVG line chart: one focusable point per cited Observation. */
export function trendChart(group, chip) {
  const W = 560, H = 200, L = 46, R = 16, T = 22, B = 34;
  const ts = group.points.map((p) => time(p.date));
  const all = group.points.flatMap((p) => p.values);
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 - t0 < DAY) { t0 -= 15 * DAY; t1 += 15 * DAY; }
  const lo = Math.min(...all), hi = Math.max(...all), pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
  const ticks = niceTicks(lo - pad, hi + pad, 4);
  const v0 = ticks[0], v1 = ticks[ticks.length - 1] === ticks[0] ? ticks[0] + 1 : ticks[ticks.length - 1];
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - v0) / (v1 - v0)) * (H - T - B);
  const first = group.points[0], last = group.points[group.points.length - 1];
  const title = `${group.display}: ${group.points.length} results from ${first.label} on ${first.date} to ${last.label} on ${last.date}`;
  const chart = svg("svg", {class: "trend", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, "data-points": group.points.length});
  chart.append(svg("title", {}, title));
  for (const v of ticks) {
    chart.append(svg("line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)}));
    chart.append(svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, String(v)));
  }
  chart.append(svg("line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
  const years = new Set();
  const labelled = [0, Math.floor((group.points.length - 1) / 2), group.points.length - 1];
  for (const i of new Set(labelled)) {
    const t = ts[i];
    chart.append(svg("text", {x: x(t), y: H - B + 16, "text-anchor": i === 0 ? "start" : i === group.points.length - 1 ? "end" : "middle"}, fmtDate(t)));
    years.add(fmtDate(t).slice(0, 4));
  }
  if (group.unit) { chart.append(svg("text", {x: 4, y: 12}, group.unit)); }
  const series = group.points[0].values.length;
  for (let s = 0; s < series; s++) {
    const d = group.points.map((p, i) => (i ? "L" : "M") + x(ts[i]).toFixed(1) + " " + y(p.values[s]).toFixed(1)).join(" ");
    chart.append(svg("path", {class: "line", d}));
  }
  group.points.forEach((p, i) => {
    const link = svg("a", {href: "#", class: "point", "data-ref": p.ref, role: "button", "aria-label": `${p.label} on ${p.date} — open the Observation`});
    link.append(svg("title", {}, `${p.label} on ${p.date}`));
    for (const v of p.values) { link.append(svg("circle", {cx: x(ts[i]).toFixed(1), cy: y(v).toFixed(1), r: 5.5})); }
    chart.append(link);
    if (i === 0 || i === group.points.length - 1 || group.points.length <= 8) {
      const top = Math.min(...p.values.map(y));
      chart.append(svg("text", {class: "val", x: x(ts[i]), y: top - 9, "text-anchor": i === 0 ? "start" : i === group.points.length - 1 ? "end" : "middle"}, p.label.replace(/\s*%$/, "%")));
    }
    chip(link, p.ref);
  });
  const trend = last.values[0] - first.values[0];
  const word = Math.abs(trend) < 1e-9 ? "unchanged" : trend < 0 ? "down" : "up";
  return el("figure", {class: "trend-figure", "data-display": group.display},
    el("figcaption", {}, group.display, el("span", {class: "sub", text: `${group.points.length} results · ${word} from ${first.label} to ${last.label}`})),
    chart);
}

// -- medications ---------------------------------------------------------------------------

const QUANTITY = /^(\d+(\.\d+)?|hr|ml|mg|g|mcg|actuat|unt|meq)$/i;

/** The ingredient part of a product name: "24 HR metformin hydrochloride 500 MG …" → "metformin hydrochloride". */
export function ingredientOf(display) {
  const words = String(display || "").split(/\s+/).filter(Boolean);
  let i = 0;
  while (i < words.length && QUANTITY.test(words[i])) { i++; }
  const name = [];
  for (; i < words.length && !/^\d/.test(words[i]) && !/^\[/.test(words[i]); i++) { name.push(words[i]); }
  return (name.join(" ") || display || "medication").replace(/\s+(oral|tablet|capsule)$/i, "");
}

const CURRENT = new Set(["active", "on-hold", "draft"]);

function medicationText(r, fallback) {
  const cc = r && r.medicationCodeableConcept;
  return (cc && (cc.text || (cc.coding || [])[0]?.display)) || (r && r.medicationReference && r.medicationReference.display) || fallback;
}

/** Per ingredient: the orders (cited MedicationRequests), current or past, first and last. */
export function medicationGroups(citations, resources) {
  const groups = new Map();
  for (const [ref, c] of Object.entries(citations)) {
    if (c.resource_type !== "MedicationRequest") { continue; }
    const r = resources.get(ref);
    const product = medicationText(r, c.display);
    const key = ingredientOf(product).toLowerCase();
    if (!groups.has(key)) { groups.set(key, {name: ingredientOf(product), products: new Set(), orders: []}); }
    const g = groups.get(key);
    g.products.add(product);
    g.orders.push({ref, date: String((r && r.authoredOn) || c.date || "").slice(0, 10), status: r ? r.status : c.status, dosage: r && (r.dosageInstruction || [])[0]?.text});
  }
  const out = [...groups.values()].map((g) => {
    g.orders = g.orders.filter((o) => o.date).sort(byDate);
    const latest = g.orders[g.orders.length - 1];
    g.current = Boolean(latest && CURRENT.has(latest.status));
    g.latest = latest;
    return g;
  }).filter((g) => g.orders.length);
  return out.sort((a, b) => (b.current - a.current) || (time(b.latest.date) - time(a.latest.date)));
}

export function medicationTimeline(groups, chip) {
  const ts = groups.flatMap((g) => g.orders.map((o) => time(o.date)));
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 - t0 < 30 * DAY) { t0 -= 30 * DAY; t1 += 30 * DAY; }
  const pos = (t) => (4 + ((t - t0) / (t1 - t0)) * 92).toFixed(2) + "%";
  const body = el("tbody");
  for (const g of groups) {
    const first = g.orders[0], last = g.latest;
    const lane = el("div", {class: "lane"});
    const bar = el("span", {class: "bar" + (g.current ? " current" : "")});
    bar.style.left = pos(time(first.date));
    bar.style.width = `calc(${pos(time(last.date))} - ${pos(time(first.date))})`;
    lane.append(bar);
    for (const o of g.orders) {
      const tick = el("a", {href: "#", class: "tick", "data-ref": o.ref, role: "button", title: `${o.date}${o.status ? " · " + o.status : ""}`, "aria-label": `${g.name} order of ${o.date}${o.status ? ", " + o.status : ""} — open the MedicationRequest`});
      tick.style.left = pos(time(o.date));
      lane.append(tick);
      chip(tick, o.ref);
    }
    const products = [...g.products].join("; ");
    body.append(el("tr", {class: g.current ? "current" : "past", "data-ingredient": g.name},
      el("td", {class: "drug"}, el("b", {text: g.name}), el("span", {class: "prod", text: products + (last.dosage ? " — " + last.dosage : "")})),
      el("td", {}, el("span", {class: "badge " + (g.current ? "current" : "past"), text: g.current ? "current" : "past"})),
      el("td", {class: "when", text: g.orders.length === 1 ? first.date : `${first.date} → ${last.date}`}),
      el("td", {class: "when", text: g.orders.length + (g.orders.length === 1 ? " order" : " orders")}),
      el("td", {}, lane)));
  }
  const head = el("thead", {}, el("tr", {},
    el("th", {scope: "col", text: "Ingredient"}), el("th", {scope: "col", text: "Now"}),
    el("th", {scope: "col", text: "First → last prescribed"}), el("th", {scope: "col", text: "Orders"}),
    el("th", {scope: "col"}, el("div", {class: "scale"}, el("span", {text: fmtDate(t0).slice(0, 7)}), el("span", {text: fmtDate(t1).slice(0, 7)})))));
  const current = groups.filter((g) => g.current).length;
  return el("figure", {class: "med-figure"},
    el("figcaption", {}, "Medications", el("span", {class: "sub", text: `${current} current · ${groups.length - current} past, by ingredient`})),
    el("table", {class: "meds"}, el("colgroup", {}, el("col", {class: "c-drug"}), el("col", {class: "c-now"}),
      el("col", {class: "c-when"}), el("col", {class: "c-n"}), el("col", {class: "c-lane"})), head, body));
}

// -- problems ------------------------------------------------------------------------------

const ACTIVE = new Set(["active", "recurrence", "relapse"]);

export function problemLists(citations, resources, chip) {
  const active = [], resolved = [];
  for (const [ref, c] of Object.entries(citations)) {
    if (c.resource_type !== "Condition") { continue; }
    const r = resources.get(ref);
    const status = (r && r.clinicalStatus && ((r.clinicalStatus.coding || [])[0]?.code || r.clinicalStatus.text)) || c.status;
    const item = {ref, c, status, end: (r && (r.abatementDateTime || r.abatementString)) || c.end_date};
    (ACTIVE.has(status) || (!status && !item.end) ? active : resolved).push(item);
  }
  if (!active.length && !resolved.length) { return null; }
  const list = (items, title, cls) => el("div", {class: cls},
    el("h3", {text: `${title} (${items.length})`}),
    el("ul", {}, ...items.sort((a, b) => byDate(b.c, a.c)).map((it) => {
      const a = el("a", {href: "#", class: "cite", "data-ref": it.ref, role: "button"});
      a.append(it.c.display);
      chip(a, it.ref);
      return el("li", {}, a, el("span", {class: "when", text: (it.c.date ? "since " + it.c.date : "") + (it.end ? " · until " + String(it.end).slice(0, 10) : "") + (it.status && !ACTIVE.has(it.status) ? " · " + it.status : "")}));
    })));
  return el("figure", {class: "problem-figure"},
    el("figcaption", {}, "Problems"),
    el("div", {class: "problems"}, list(active, "Active", "active"), list(resolved, "Resolved or inactive", "resolved")));
}
