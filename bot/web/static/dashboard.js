// The admin dashboard: fetches /api/dashboard and draws it; refreshes every 15 s.
import { barChart, hbarChart, lineChart } from "/static/charts.js";
import { refreshQueue } from "/static/review.js";

const $ = (id) => document.getElementById(id);
const percent = (v) => `${Math.round(v * 100)}%`;
const REFRESH_MS = 15000;

function table(target, columns, rows, emptyText) {
  if (!rows.length) {
    const p = document.createElement("p");
    p.className = "nodata";
    p.textContent = emptyText;
    target.replaceChildren(p);
    return;
  }
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const [title] of columns) head.append(Object.assign(document.createElement("th"), { textContent: title }));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [, cell] of columns) {
      const td = tr.insertCell();
      const value = cell(row);
      if (value instanceof Node) td.append(value); else td.textContent = value ?? "";
    }
  }
  target.replaceChildren(t);
}

function badge(status) {
  return Object.assign(document.createElement("span"), { className: `badge ${status}`, textContent: status });
}

function pivot(rows, key, seriesKey, valueKey) {
  const labels = [...new Set(rows.map((r) => r[key]))].sort();
  const names = [...new Set(rows.map((r) => r[seriesKey]))].sort();
  const series = names.map((name) => ({
    name,
    values: labels.map((l) => rows.filter((r) => r[key] === l && r[seriesKey] === name)
      .reduce((sum, r) => sum + r[valueKey], 0)),
  }));
  return { labels, series };
}

// The grounding check's fallback: a cited quote or "the documents do not say" instead of the model's
// draft. Only answers a model wrote count; the learning loop should make this share go down.
function drawFallback(data) {
  const t = data.totals;
  const sum = (key) => data.grounding_by_adapter.reduce((n, r) => n + r[key], 0);
  const quotes = sum("extractive");
  $("fallback-note").textContent = t.fallback_share === null
    ? "No model-written answers in this window yet."
    : `Answers that needed the fallback: ${percent(t.fallback_share)} (${t.fallback} of ${t.generated}: `
      + `${quotes} cited ${quotes === 1 ? "quote" : "quotes"}, ${sum("not_found")} "the documents do not say"); `
      + "the nightly loop should drive this down.";
  const adapters = [...new Set(data.grounding.map((r) => r.adapter))].sort();
  lineChart($("chart-fallback"), {
    labels: [...new Set(data.grounding.map((r) => r.day))].sort(), max: 1, format: percent,
    emptyText: "No model-written answers yet.",
    series: adapters.map((name) => ({
      name, points: data.grounding.filter((r) => r.adapter === name && r.share !== null).map((r) => [r.day, r.share]),
    })),
  });
  table($("fallback"), [
    ["Adapter", (r) => r.adapter], ["Model answers", (r) => r.answers], ["Needed the fallback", (r) => r.fallback],
    ["Cited quote", (r) => r.extractive], ["Documents do not say", (r) => r.not_found],
    ["Share", (r) => (r.share === null ? "—" : percent(r.share))],
  ], data.grounding_by_adapter, "No model-written answers yet.");
}

function draw(data) {
  $("active-adapter").textContent = `active adapter: ${data.active_adapter ?? "none (base model)"}`;
  const t = data.totals;
  const a = data.anonymous;
  const anonymous = a.anonymous_votes + a.anonymous_corrections;
  $("totals").replaceChildren(...[
    ["Answers", t.answers], ["👍", t.up], ["👎", t.down],
    ["Satisfaction", t.rate === null ? "—" : percent(t.rate)], ["Unanswered questions", t.gaps],
    ["Needed the fallback", t.fallback_share === null ? "—" : percent(t.fallback_share)],
    ["Anonymous feedback", a.share === null ? "—" : `${anonymous} (${percent(a.share)})`],
  ].map(([label, value]) => {
    const div = document.createElement("div");
    div.append(Object.assign(document.createElement("b"), { textContent: value }), label);
    return div;
  }));
  // Anyone can be a new anonymous visitor: their votes and corrections are shown, not trained on.
  $("anonymous-note").textContent = `Anonymous web visitors gave ${a.anonymous_votes} of ${a.votes} votes and `
    + `${a.anonymous_corrections} of ${a.corrections} corrections; training leaves them out unless `
    + "KBOT_TRAIN_ON_ANONYMOUS is on.";

  barChart($("chart-answers"), { ...pivot(data.answers_per_day, "day", "platform", "answers"), stacked: true });
  const adapters = [...new Set(data.satisfaction.map((r) => r.adapter))].sort();
  const days = [...new Set(data.satisfaction.map((r) => r.day))].sort();
  lineChart($("chart-satisfaction"), {
    labels: days, max: 1, format: percent, emptyText: "No votes yet.",
    series: adapters.map((name) => ({
      name, points: data.satisfaction.filter((r) => r.adapter === name && r.rate !== null).map((r) => [r.day, r.rate]),
    })),
  });
  barChart($("chart-adapters"), {
    labels: data.by_adapter.map((a) => a.adapter), format: String, emptyText: "No answers yet.",
    series: [
      { name: "👍", values: data.by_adapter.map((a) => a.up), color: "#2f9e44" },
      { name: "👎", values: data.by_adapter.map((a) => a.down), color: "#e03131" },
    ],
  });
  drawFallback(data);
  hbarChart($("chart-documents"), {
    items: data.top_documents.map((d) => ({ label: d.title || d.source, value: d.citations })),
    emptyText: "No cited answers yet.",
  });
  const runs = [...data.runs].reverse().filter((r) => r.metrics?.candidate);
  lineChart($("chart-runs"), {
    labels: runs.map((r) => `#${r.id}`), max: 1, format: percent, emptyText: "No evaluated nightly runs yet.",
    series: [
      { name: "candidate", points: runs.map((r) => [`#${r.id}`, gateScore(r.metrics.candidate)]) },
      { name: "active", points: runs.map((r) => [`#${r.id}`, gateScore(r.metrics.against)]) },
    ],
  });
  lineChart($("chart-loss"), {
    emptyText: "No trained adapters yet.",
    series: data.loss_curves.filter((c) => c.losses.length)
      .map((c) => ({ name: c.active ? `${c.adapter} (active)` : c.adapter, points: c.losses.map((l, i) => [i + 1, l]) })),
    format: (v) => v.toFixed(2),
  });
  table($("gaps"), [
    ["Question", (g) => g.question], ["Asked", (g) => g.asked],
    ["Outcome", (g) => (g.status === "not_found" ? "not in the documents" : "failed")], ["Last asked", (g) => g.last],
  ], data.gaps, "None: every question found an answer.");
  table($("runs"), [
    ["#", (r) => r.id], ["Started", (r) => r.started_at], ["Status", (r) => badge(r.status)],
    ["Candidate", (r) => r.candidate], ["Trained", (r) => (r.plan || []).join(" → ").toUpperCase()],
    ["Why", (r) => r.why || ""], ["Decision", (r) => r.decision || r.error],
  ], data.runs, "No nightly runs yet (kbot nightly).");
  table($("sources"), [
    ["Source", (r) => r.name], ["Path", (r) => r.path], ["Collection", (r) => r.collection],
    ["Status", (r) => badge(r.status)], ["Last sync", (r) => r.finished_at || r.started_at],
    ["Last good", (r) => r.last_ok_at || "never"], ["Detail", (r) => r.detail],
  ], data.sources, "No synced sources ([sources] in kbot.toml).");
}

// The gate's own measure (golden facts in the model's own text); older runs had only preferences.
function gateScore(m) {
  return m?.fact_hit_rate ?? m?.preference_accuracy ?? 0;
}

async function load() {
  const response = await fetch(`/api/dashboard?days=${$("days").value}`, { cache: "no-store" });
  if (response.status === 401) {
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    return false;
  }
  if (!response.ok) {
    $("error").hidden = false;
    $("error").textContent = `The dashboard could not be loaded: ${(await response.json()).error ?? response.status}`;
    return true;
  }
  $("error").hidden = true;
  $("login").hidden = true;
  $("logout").hidden = false;
  $("dashboard").hidden = false;
  draw(await response.json());
  refreshQueue();
  document.body.dataset.loadedAt = String(Date.now());
  return true;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  window.location.href = `/login?token=${encodeURIComponent($("token").value)}`;
});
$("refresh").addEventListener("click", load);
$("days").addEventListener("change", load);
load().then((signedIn) => { if (signedIn) setInterval(load, REFRESH_MS); });
