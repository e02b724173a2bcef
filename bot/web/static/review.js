// The review queue on the dashboard: corrections people wrote, each with the question, the answer
// they corrected, its sources and the 👎 reasons given on it; approve, edit (then approve) or reject.
// Everything people wrote is set as text (textContent), never parsed as HTML.

const $ = (id) => document.getElementById(id);
const LABELS = { pending: "awaiting review", approved: "approved", rejected: "rejected" };
let busy = false; // a decision or a load in flight: the periodic refresh waits

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function field(label, ...content) {
  return el("div", { class: "field" }, el("h4", {}, label), ...content);
}

function sourceList(sources) {
  if (!sources.length) return el("p", { class: "nodata" }, "No sources: the answer used no passage.");
  const list = el("ol", { class: "sources" });
  for (const s of sources) {
    const item = el("li", { class: "source" }, `[${s.n ?? "?"}] `, el("span", { class: "title" }, s.title || s.source),
      el("span", { class: "path" }, s.source));
    if (s.cited) item.append(el("span", { class: "badge cited" }, "cited"));
    if (s.deleted) item.append(el("span", { class: "badge deleted", title: "No longer in the knowledge base" }, "document deleted"));
    if (s.text) item.append(el("blockquote", {}, s.text));
    else if (s.quote) item.append(el("blockquote", {}, s.quote));
    list.append(item);
  }
  return list;
}

function reasonList(reasons) {
  if (!reasons.length) return el("p", { class: "nodata" }, "Nobody gave a reason with a 👎.");
  return el("ul", { class: "reasons" }, ...reasons.map((r) => el("li", {}, el("q", {}, r.text), ` (${r.platform})`)));
}

async function decide(correction, action, text, note) {
  busy = true;
  note.textContent = "Saving…";
  const body = { action, updated_at: correction.updated_at };
  if (text !== undefined) body.text = text;
  try {
    const response = await fetch(`/api/corrections/${correction.id}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      note.textContent = (await response.text()) || `HTTP ${response.status}`;
      return;
    }
  } catch (error) {
    note.textContent = `Not saved: ${error.message}`;
    return;
  } finally {
    busy = false;
  }
  await loadQueue();
}

function controls(c) {
  const note = el("span", { class: "status", role: "status" });
  const actions = el("div", { class: "actions" });
  const approve = el("button", { type: "button", class: "approve", onclick: () => decide(c, "approve", undefined, note) },
    "Approve");
  const reject = el("button", { type: "button", class: "reject", onclick: () => decide(c, "reject", undefined, note) },
    "Reject");
  const edit = el("button", { type: "button", class: "edit" }, "Edit");
  const editor = el("div", { class: "better", hidden: "" });
  const area = el("textarea", { "aria-label": "Edited correction" });
  area.value = c.approved_text ?? c.text;
  editor.append(area, el("div", { class: "actions" },
    el("button", { type: "button", class: "primary", onclick: () => decide(c, "approve", area.value, note) },
      "Approve edited"),
    el("button", { type: "button", onclick: () => { editor.hidden = true; } }, "Cancel")));
  edit.addEventListener("click", () => { editor.hidden = false; area.focus(); });
  if (c.status !== "approved") actions.append(approve);
  actions.append(edit);
  if (c.status !== "rejected") actions.append(reject);
  actions.append(note);
  return [actions, editor];
}

function card(c) {
  const shown = el("p", { class: "shown" }, c.answer);
  const answer = c.not_found ? [el("span", { class: "badge not_found" }, "not found"), shown] : [shown];
  if (c.verified !== null) answer.unshift(el("p", { class: "hint" }, `This was verified answer #${c.verified}.`));
  const corrected = [el("p", { class: "text" }, c.text)];
  if (c.approved_text) corrected.push(el("h4", {}, "Approved as edited"), el("p", { class: "text" }, c.approved_text));
  let reviewed = c.reviewer ? ` · ${LABELS[c.status]} by ${c.reviewer}, ${when(c.reviewed_at)}` : "";
  if (c.status === "approved") {
    reviewed += c.acl?.length ? ` · answers ${c.acl.includes("*") ? "everyone" : c.acl.join(", ")}` : " · answers nobody";
  }
  return el("article", { class: "correction", "data-id": String(c.id) },
    el("p", { class: "meta" }, `#${c.id} by ${c.author} (${c.platform}), ${when(c.updated_at)}${reviewed}`),
    field("Question", el("p", {}, c.question)),
    field("Shown answer", ...answer),
    field("Sources", sourceList(c.sources)),
    field("👎 reasons", reasonList(c.reasons)),
    field("Correction", ...corrected),
    ...controls(c));
}

export async function loadQueue() {
  busy = true;
  try {
    const status = $("review-status").value;
    const response = await fetch(`/api/corrections?status=${encodeURIComponent(status)}`, { cache: "no-store" });
    if (!response.ok) {
      $("review-list").replaceChildren(el("p", { class: "error" }, `The queue could not be loaded (${response.status}).`));
      return;
    }
    const data = await response.json();
    $("review-count").textContent = String(data.counts.pending);
    for (const option of $("review-status").options) {
      option.textContent = `${LABELS[option.value]} (${data.counts[option.value]})`;
    }
    $("review-list").replaceChildren(...(data.items.length ? data.items.map(card)
      : [el("p", { class: "nodata" }, `No corrections ${LABELS[status]}.`)]));
  } finally {
    busy = false;
  }
}

// The dashboard's periodic refresh: never while an edit is open or a decision is being saved.
export function refreshQueue() {
  const editing = [...document.querySelectorAll("#review-list .better")].some((e) => !e.hidden);
  if (!busy && !editing) loadQueue();
}

$("review-status").addEventListener("change", loadQueue);
