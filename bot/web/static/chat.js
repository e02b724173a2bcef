// The web chat: sends a question, shows the answer as it streams (Server-Sent Events over
// fetch), then its sources and the feedback controls. No framework: the page is small.

const $ = (id) => document.getElementById(id);
const messages = $("messages");
const form = $("ask");
const input = $("question");
const send = $("send");

function newId() {
  // crypto.randomUUID exists only on https and localhost; kbot may be served over plain http.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function conversation() {
  let id = sessionStorage.getItem("kbot-conversation");
  if (!id) {
    id = newId();
    sessionStorage.setItem("kbot-conversation", id);
  }
  return id;
}

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

// Answer text with its [n] markers turned into links to the numbered sources below it.
function renderText(target, text, answerId, cited) {
  target.replaceChildren();
  let last = 0;
  // [n] markers, and *emphasis* (the cited answer names its document so: According to *Title* [1]).
  for (const match of text.matchAll(/\[(\d{1,2})\]|\*([^*\n]+)\*/g)) {
    target.append(text.slice(last, match.index));
    const n = Number(match[1]);
    if (match[2] !== undefined) {
      target.append(el("em", {}, match[2]));
    } else if (cited.has(n)) {
      target.append(el("sup", {}, el("a", { href: `#src-${answerId}-${n}` }, `[${n}]`)));
    } else {
      target.append(match[0]);
    }
    last = match.index + match[0].length;
  }
  target.append(text.slice(last));
}

function sources(answerId, citations) {
  const list = el("ol", { class: "sources", "aria-label": "Sources" });
  for (const c of citations) {
    const title = c.url
      ? el("a", { href: c.url, target: "_blank", rel: "noopener noreferrer" }, c.title || c.source)
      : document.createTextNode(c.title || c.source);
    const item = el("li", { id: `src-${answerId}-${c.n}`, class: "source" },
      `[${c.n}] `, el("span", { class: "title" }, title), el("span", { class: "path" }, c.source));
    if (c.quote) item.append(el("blockquote", {}, c.quote));
    list.append(item);
  }
  return list;
}

async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error((await response.text()) || `HTTP ${response.status}`);
  return response;
}

// What a 👎 can say was wrong: the same list as Slack's and Teams' dialogs, asked for once.
let reasonList = null;
function reasons() {
  reasonList ??= fetch("/api/feedback/reasons").then((r) => r.ok ? r.json() : { reasons: [] })
    .catch(() => ({ reasons: [] }));
  return reasonList;
}

// Shown under an answer after its 👎: tick what was wrong, add words, send; or skip.
function reasonsBox(answerId, status) {
  const box = el("fieldset", { class: "reasons", hidden: "" }, el("legend", {}, "What was wrong? (optional)"));
  const detail = el("textarea", { "aria-label": "Anything else", placeholder: "Anything else?" });
  const send = el("button", { type: "button", class: "primary send-reasons" }, "Send");
  const skip = el("button", { type: "button", class: "skip-reasons" }, "Skip");
  const ticks = el("div", { class: "ticks" });
  box.append(ticks, detail, el("div", { class: "row" }, send, skip));
  skip.addEventListener("click", () => { box.hidden = true; });
  send.addEventListener("click", async () => {
    const chosen = [...ticks.querySelectorAll("input:checked")].map((i) => i.value);
    if (!chosen.length && !detail.value.trim()) { status.textContent = "Tick a reason or write one first."; return; }
    try {
      await postJSON("/api/feedback", { answer_id: answerId, kind: "vote", value: -1, reasons: chosen, text: detail.value });
      box.hidden = true;
      status.textContent = "Thanks — your reasons are saved with your 👎.";
    } catch (error) {
      status.textContent = `Not saved: ${error.message}`;
    }
  });
  async function open() {
    if (!ticks.childElementCount) {
      const offered = await reasons();
      if (offered.max_detail) detail.maxLength = offered.max_detail;
      for (const r of offered.reasons) {
        ticks.append(el("label", {}, el("input", { type: "checkbox", value: r.value }), ` ${r.label}`));
      }
    }
    box.hidden = false;
  }
  return { box, open };
}

function feedbackControls(answerId) {
  const status = el("span", { class: "status", role: "status" });
  const why = reasonsBox(answerId, status);
  let current = 0;
  const up = el("button", { type: "button", "aria-pressed": "false", title: "Good answer", class: "vote-up" }, "👍");
  const down = el("button", { type: "button", "aria-pressed": "false", title: "Bad answer", class: "vote-down" }, "👎");
  async function vote(value) {
    const body = current === value
      ? { answer_id: answerId, kind: "unvote", value }
      : { answer_id: answerId, kind: "vote", value };
    try {
      await postJSON("/api/feedback", body);
      current = current === value ? 0 : value;
      up.setAttribute("aria-pressed", String(current === 1));
      down.setAttribute("aria-pressed", String(current === -1));
      status.textContent = current ? "Thanks — recorded." : "Vote taken back.";
      if (current === -1) await why.open(); else why.box.hidden = true;
    } catch (error) {
      status.textContent = `Not saved: ${error.message}`;
    }
  }
  up.addEventListener("click", () => vote(1));
  down.addEventListener("click", () => vote(-1));

  const better = el("button", { type: "button", class: "suggest" }, "✏️ Suggest a better answer");
  const box = el("div", { class: "better", hidden: "" });
  const text = el("textarea", { "aria-label": "A better answer", maxlength: "8000" });
  const save = el("button", { type: "button", class: "primary save-better" }, "Save");
  box.append(text, save);
  better.addEventListener("click", () => { box.hidden = !box.hidden; text.focus(); });
  save.addEventListener("click", async () => {
    if (!text.value.trim()) { status.textContent = "Write the better answer first."; return; }
    try {
      await postJSON("/api/feedback", { answer_id: answerId, kind: "correction", text: text.value });
      box.hidden = true;
      status.textContent = "Thanks — once a reviewer approves it, kbot answers with it and learns from it.";
    } catch (error) {
      status.textContent = `Not saved: ${error.message}`;
    }
  });
  return [el("div", { class: "actions" }, up, down, better, status), why.box, box];
}

// Reads "event: …\ndata: …\n\n" blocks from a fetch body as they arrive.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
      const data = /^data: (.*)$/m.exec(block)?.[1] ?? "{}";
      yield [event, JSON.parse(data)];
    }
  }
}

async function ask(question) {
  $("empty")?.remove();
  messages.append(el("div", { class: "msg question" }, question));
  const text = el("div", { class: "text" });
  const answer = el("div", { class: "msg answer streaming", "aria-busy": "true" }, text);
  messages.append(answer);
  answer.scrollIntoView({ block: "end" });
  let shown = "";
  try {
    const response = await postJSON("/api/chat", { id: newId(), conversation: conversation(), text: question });
    for await (const [event, data] of events(response)) {
      if (event === "status") {
        // What kbot is doing ("Reading 4 sources…"), until the first text replaces it.
        if (!shown) { text.textContent = data.text; text.classList.add("status"); }
      } else if (event === "delta") {
        text.classList.remove("status");
        shown += data.text;
        text.textContent = shown;
      } else if (event === "answer") {
        text.classList.remove("status");
        answer.dataset.answerId = data.answer_id;
        answer.dataset.status = data.status;
        const cited = new Set(data.citations.map((c) => c.n));
        renderText(text, data.text, data.answer_id, cited);
        if (data.citations.length) answer.append(sources(data.answer_id, data.citations));
        if (data.status !== "error") answer.append(...feedbackControls(data.answer_id));
      } else if (event === "notice") {
        if (text.classList.contains("status")) { text.textContent = ""; text.classList.remove("status"); }
        answer.append(el("div", { class: "notice" }, data.text));
      }
      answer.scrollIntoView({ block: "end" });
    }
  } catch (error) {
    answer.append(el("div", { class: "notice" }, `kbot could not be reached: ${error.message}`));
  } finally {
    answer.classList.remove("streaming");
    answer.setAttribute("aria-busy", "false");
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = input.value.trim();
  if (!question) return;
  input.value = "";
  send.disabled = true;
  try {
    await ask(question);
  } finally {
    send.disabled = false;
    input.focus();
  }
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();  // isComposing: Enter that picks a Chinese IME candidate must not send
    form.requestSubmit();
  }
});

$("new-conversation").addEventListener("click", () => {
  sessionStorage.removeItem("kbot-conversation");
  messages.replaceChildren(el("p", { class: "empty", id: "empty" }, "New conversation. Ask away."));
  input.focus();
});
