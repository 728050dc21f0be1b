// flowhost console: playground, sessions, traces. Plain JS, no dependencies, works offline.
// Every API call sends the service token; every failure is shown in the error banner.
"use strict";

const API_ROOT = new URL("../", window.location.href); // the page is served at <root>/ui/
const TOKEN_KEY = "flowhost.token";
const state = {
  token: null,
  apps: [],
  defaultApp: null,
  app: null, // the playground's app
  sessionId: null, // the playground's chat session
  busy: false,
  sessionsPage: 0,
  tracesPage: 0,
  messagesPage: 0,
};
const PAGE = 25;

// ---------------------------------------------------------------------------------------------
// small helpers

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function fmtTokens(usage) {
  if (!usage) return "";
  return `${usage.input_tokens} in / ${usage.output_tokens} out`;
}

function short(id) {
  return id && id.length > 12 ? `${id.slice(0, 8)}…` : id || "";
}

function pretty(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

// ---------------------------------------------------------------------------------------------
// errors

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    showError(err && err.message ? err.message : String(err));
    return undefined;
  }
}

window.addEventListener("error", (e) => showError(`Unexpected error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) =>
  showError(`Unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`),
);

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiUrl(path, params) {
  const url = new URL(path.replace(/^\//, ""), API_ROOT);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  return url;
}

function authHeaders(extra) {
  const headers = { ...(extra || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  return headers;
}

async function errorFrom(resp) {
  let detail = "";
  try {
    const body = await resp.json();
    detail = body.detail || body.message || (body.error && body.error.message) || "";
    if (typeof detail !== "string") detail = JSON.stringify(detail);
  } catch (_) {
    detail = resp.statusText;
  }
  return new ApiError(resp.status, `${resp.status}: ${detail || resp.statusText}`);
}

async function send(path, { method = "GET", params, body, headers } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), init);
  } catch (err) {
    throw new ApiError(0, `Cannot reach the server (${err.message})`);
  }
  if (resp.status === 401) {
    signOut("The server refused the token. Sign in again.");
    throw await errorFrom(resp);
  }
  if (!resp.ok) throw await errorFrom(resp);
  return resp;
}

async function api(path, options) {
  const resp = await send(path, options);
  return resp.status === 204 ? null : resp.json();
}

// Split an SSE byte stream into the JSON payloads of its `data:` lines.
async function* sseData(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let m;
    while ((m = /\r?\n\r?\n/.exec(buf))) {
      const block = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

// Run an app in complete mode (stream: true) and report progress to `on`:
// on.started({traceId, runId, sessionId}), on.node(info), on.delta(name, text),
// on.output(name, value), on.end(status, error).
async function runApp(appId, inputs, sessionId, on) {
  const headers = sessionId ? { "Chat-Session-Id": sessionId } : {};
  const resp = await send(`apps/${encodeURIComponent(appId)}/run`, {
    method: "POST",
    body: { inputs, stream: true },
    headers,
  });
  const started = {
    sessionId: resp.headers.get("Chat-Session-Id"),
    traceId: resp.headers.get("X-Trace-Id"),
    runId: null,
  };
  let ended = false;
  for await (const ev of sseData(resp)) {
    if (ev.event === "RunStarted") {
      started.runId = ev.run_id;
      started.traceId = ev.flow_run_info.otel_trace_id || started.traceId;
      on.started(started);
    } else if (ev.event === "NodeUpdated") {
      for (const info of ev.node_run_infos) on.node(info);
    } else if (ev.event === "RunOutput") {
      for (const [name, value] of Object.entries(ev.outputs)) {
        const meta = (ev.output_metadata || {})[name] || {};
        if (meta.is_stream && meta.status === "Streaming") on.delta(name, value);
        else on.output(name, value);
      }
    } else if (ev.event === "RunTerminated") {
      ended = true;
      on.end(ev.flow_run_info.status, ev.flow_run_info.error);
    }
  }
  if (!ended) on.end("Failed", { message: "the stream ended before the run did" });
  return started;
}

// ---------------------------------------------------------------------------------------------
// sign in

async function signIn(token) {
  state.token = token;
  const data = await api("apps");
  state.apps = data.apps;
  state.defaultApp = data.default_app;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("nav").hidden = false;
  $("signout").hidden = false;
  fillAppSelects();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("nav").hidden = true;
  $("signout").hidden = true;
  showView("signin");
  if (message) showError(message);
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  guarded(async () => {
    await signIn($("token").value.trim());
    $("token").value = "";
    if (!window.location.hash || window.location.hash === "#/signin") {
      window.location.hash = "#/playground";
    } else {
      await route();
    }
  });
});

$("signout").addEventListener("click", () => signOut());
$("error-close").addEventListener("click", clearError);

// ---------------------------------------------------------------------------------------------
// routing

const VIEWS = ["signin", "playground", "sessions", "session", "traces", "trace"];

function showView(name) {
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  const section = name === "session" ? "sessions" : name === "trace" ? "traces" : name;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === section);
  }
}

async function route() {
  if (state.token === null) {
    showView("signin");
    return;
  }
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [view, id] = parts;
  if (view === "sessions" && id) {
    showView("session");
    state.messagesPage = 0;
    await guarded(() => loadSession(id));
  } else if (view === "sessions") {
    showView("sessions");
    await guarded(loadSessions);
  } else if (view === "traces" && id) {
    showView("trace");
    await guarded(() => loadTrace(id));
  } else if (view === "traces") {
    showView("traces");
    await guarded(loadTraces);
  } else {
    showView("playground");
    if (!state.app) selectApp(state.defaultApp);
  }
}

window.addEventListener("hashchange", () => {
  clearError();
  route();
});

function fillAppSelects() {
  const select = $("app-select");
  clear(select);
  for (const a of state.apps) select.append(el("option", { value: a.app_id, text: a.app_id }));
  for (const id of ["sessions-app", "traces-app"]) {
    const s = clear($(id));
    s.append(el("option", { value: "", text: "all apps" }));
    for (const a of state.apps) s.append(el("option", { value: a.app_id, text: a.app_id }));
  }
}

function appById(appId) {
  return state.apps.find((a) => a.app_id === appId) || null;
}

// ---------------------------------------------------------------------------------------------
// playground

function selectApp(appId, sessionId = null) {
  const app = appById(appId) || state.apps[0];
  if (!app) {
    showError("This server serves no apps.");
    return;
  }
  state.app = app;
  $("app-select").value = app.app_id;
  $("app-kind").textContent = app.is_chat ? "chat" : "flow";
  clear($("transcript"));
  $("run-result").hidden = true;
  setSession(sessionId);
  $("chat").hidden = !app.is_chat;
  $("form-run").hidden = app.is_chat;
  $("session-box").hidden = !app.is_chat;
  $("new-session").hidden = !app.is_chat;
  const skip = new Set([app.chat_input, chatHistoryKey(app)]);
  renderFields($("extra-inputs"), app.is_chat ? app : null, skip);
  renderFields($("run-fields"), app.is_chat ? null : app, new Set());
}

function chatHistoryKey(app) {
  for (const [name, spec] of Object.entries(app.inputs)) if (spec.is_chat_history) return name;
  return null;
}

function setSession(sessionId) {
  state.sessionId = sessionId;
  $("session-id").textContent = sessionId || "new";
}

function fieldId(name) {
  return `input-${name}`;
}

function renderFields(container, app, skip) {
  clear(container);
  if (!app) return;
  for (const [name, spec] of Object.entries(app.inputs)) {
    if (skip.has(name)) continue;
    const type = spec.type || "string";
    const id = fieldId(name);
    const def = spec.default;
    let input;
    if (type === "bool") {
      input = el("input", { id, type: "checkbox", "data-type": type });
      input.checked = Boolean(def);
    } else if (type === "int" || type === "double") {
      input = el("input", { id, type: "number", step: type === "int" ? "1" : "any", "data-type": type });
      if (def !== undefined && def !== null) input.value = def;
    } else {
      input = el("textarea", { id, rows: type === "string" ? 2 : 4, "data-type": type });
      if (def !== undefined && def !== null) input.value = type === "string" ? def : JSON.stringify(def);
    }
    const hint = spec.description ? el("span", { class: "muted", text: ` ${spec.description}` }) : null;
    container.append(el("label", { for: id }, el("b", { text: name }), ` (${type})`, hint), input);
  }
}

function readFields(container) {
  const inputs = {};
  for (const input of container.querySelectorAll("[data-type]")) {
    const name = input.id.replace(/^input-/, "");
    const type = input.dataset.type;
    if (type === "bool") inputs[name] = input.checked;
    else if (input.value === "") continue;
    else if (type === "int" || type === "double") inputs[name] = Number(input.value);
    else if (type === "string") inputs[name] = input.value;
    else {
      try {
        inputs[name] = JSON.parse(input.value);
      } catch (err) {
        throw new Error(`input ${name}: not valid JSON (${err.message})`);
      }
    }
  }
  return inputs;
}

function traceLink(traceId, label = "trace") {
  return el("a", { href: `#/traces/${traceId}`, class: "trace-link", text: label });
}

function addBubble(role, text) {
  const body = el("div", { class: "bubble-text", text });
  const foot = el("div", { class: "bubble-foot" });
  const bubble = el("div", { class: `bubble ${role}` }, body, foot);
  $("transcript").append(bubble);
  bubble.scrollIntoView({ block: "end" });
  return { bubble, body, foot };
}

function setBusy(busy) {
  state.busy = busy;
  $("chat-send").disabled = busy;
  $("run-button").disabled = busy;
  $("new-session").disabled = busy;
}

async function sendChat() {
  const app = state.app;
  const text = $("chat-input").value.trim();
  if (!text || state.busy) return;
  const inputs = { ...readFields($("extra-inputs")), [app.chat_input]: text };
  $("chat-input").value = "";
  addBubble("user", text);
  const reply = addBubble("assistant", "");
  reply.bubble.classList.add("streaming");
  setBusy(true);
  const started = Date.now();
  try {
    await runApp(app.app_id, inputs, state.sessionId, {
      started(info) {
        if (info.sessionId) setSession(info.sessionId);
        if (info.traceId) reply.bubble.dataset.traceId = info.traceId;
      },
      node() {},
      delta(name, value) {
        if (name === app.chat_output) reply.body.textContent += value;
      },
      output(name, value) {
        if (name === app.chat_output && value !== undefined) reply.body.textContent = pretty(value);
      },
      end(status, error) {
        reply.bubble.classList.remove("streaming");
        const secs = ((Date.now() - started) / 1000).toFixed(1);
        reply.foot.append(statusBadge(status.toLowerCase()), ` ${secs} s `);
        if (reply.bubble.dataset.traceId) reply.foot.append(traceLink(reply.bubble.dataset.traceId));
        if (error) {
          reply.bubble.classList.add("failed");
          reply.body.append(el("div", { class: "bubble-error", text: error.message }));
        }
      },
    });
  } catch (err) {
    reply.bubble.classList.remove("streaming");
    reply.bubble.classList.add("failed");
    reply.body.append(el("div", { class: "bubble-error", text: err.message }));
    throw err;
  } finally {
    setBusy(false);
    $("chat-input").focus();
  }
}

async function runForm() {
  const app = state.app;
  if (state.busy) return;
  const inputs = readFields($("run-fields"));
  const nodes = clear($("run-nodes"));
  const output = $("run-output");
  const outputs = {};
  output.textContent = "";
  $("run-result").hidden = false;
  $("run-trace").hidden = true;
  $("run-status").className = "badge";
  $("run-status").textContent = "running";
  const nodeItems = {};
  setBusy(true);
  try {
    await runApp(app.app_id, inputs, null, {
      started(info) {
        if (info.traceId) {
          $("run-trace").href = `#/traces/${info.traceId}`;
          $("run-trace").hidden = false;
        }
      },
      node(info) {
        let item = nodeItems[info.node];
        if (!item) {
          item = el("li");
          nodeItems[info.node] = item;
          nodes.append(item);
        }
        clear(item).append(
          el(
            "span",
            {},
            statusBadge(info.status.toLowerCase()),
            ` ${info.node} `,
            info.duration ? el("span", { class: "muted", text: fmtDuration(info.duration * 1000) }) : null,
            info.error ? el("span", { class: "bubble-error", text: ` ${info.error.message}` }) : null,
          ),
        );
      },
      delta(name, value) {
        outputs[name] = (outputs[name] || "") + value;
        output.textContent = pretty(outputs);
      },
      output(name, value) {
        if (value !== undefined) outputs[name] = value;
        output.textContent = pretty(outputs);
      },
      end(status, error) {
        $("run-status").className = `badge status-${status.toLowerCase()}`;
        $("run-status").textContent = status.toLowerCase();
        if (error) output.textContent = `${pretty(outputs)}\n\nError: ${error.message}`;
      },
    });
  } finally {
    setBusy(false);
  }
}

$("app-select").addEventListener("change", (e) => selectApp(e.target.value));
$("new-session").addEventListener("click", () => {
  setSession(null);
  clear($("transcript"));
  $("chat-input").focus();
});
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  guarded(sendChat);
});
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    clearError();
    guarded(sendChat);
  }
});
$("run-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  guarded(runForm);
});

// ---------------------------------------------------------------------------------------------
// sessions

function pager(container, page, total, onPage) {
  clear(container);
  const pages = Math.max(1, Math.ceil(total / PAGE));
  container.append(
    el("button", { disabled: page <= 0, onclick: () => onPage(page - 1), text: "← Newer" }),
    el("span", { class: "muted", text: ` page ${page + 1} of ${pages} ` }),
    el("button", { disabled: page + 1 >= pages, onclick: () => onPage(page + 1), text: "Older →" }),
  );
}

async function loadSessions() {
  const data = await api("api/v1/history/sessions", {
    params: { app_id: $("sessions-app").value, limit: PAGE, offset: state.sessionsPage * PAGE },
  });
  const body = clear($("sessions-table").tBodies[0]);
  $("sessions-count").textContent = `${data.total} sessions`;
  if (!data.sessions.length) {
    body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No sessions yet." })));
  }
  for (const s of data.sessions) {
    const open = `#/sessions/${encodeURIComponent(s.session_id)}`;
    body.append(
      el(
        "tr",
        { "data-session": s.session_id },
        el("td", {}, el("a", { href: open, text: s.title || "(untitled)" })),
        el("td", { text: s.app_id }),
        el("td", {}, el("code", { title: s.session_id, text: short(s.session_id) })),
        el("td", { text: fmtTime(s.updated_at) }),
        el("td", { text: s.turn_count }),
        el(
          "td",
          {},
          el("button", {
            class: "danger small",
            text: "Delete",
            onclick: () => guarded(() => deleteSession(s.session_id, loadSessions)),
          }),
        ),
      ),
    );
  }
  pager($("sessions-pager"), state.sessionsPage, data.total, (p) => {
    state.sessionsPage = p;
    guarded(loadSessions);
  });
}

async function deleteSession(sessionId, then) {
  if (!window.confirm(`Delete session ${sessionId} and all its messages?`)) return;
  await api(`api/v1/history/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE" });
  if (state.sessionId === sessionId) setSession(null);
  await then();
}

function userText(app, inputs) {
  if (app && app.chat_input && inputs[app.chat_input] !== undefined) return pretty(inputs[app.chat_input]);
  return pretty(inputs);
}

function answerText(app, outputs) {
  if (!outputs) return "";
  if (app && app.chat_output && outputs[app.chat_output] !== undefined) {
    return pretty(outputs[app.chat_output]);
  }
  return pretty(outputs);
}

async function openRunTrace(runId) {
  const data = await api("api/v1/traces", { params: { run_id: runId, limit: 1 } });
  if (!data.traces.length) throw new Error(`No trace was recorded for run ${runId}.`);
  window.location.hash = `#/traces/${data.traces[0].trace_id}`;
}

async function loadSession(sessionId) {
  const path = `api/v1/history/sessions/${encodeURIComponent(sessionId)}`;
  const session = await api(path);
  const data = await api(`${path}/messages`, {
    params: { limit: PAGE, offset: state.messagesPage * PAGE },
  });
  const app = appById(session.app_id);
  $("session-title").textContent = session.title || "(untitled)";
  $("session-meta").textContent =
    `${session.app_id} · session ${session.session_id} · ` +
    `${session.turn_count} turns · created ${fmtTime(session.created_at)}` +
    (session.user_id ? ` · user ${session.user_id}` : "");
  $("session-continue").onclick = () => {
    window.location.hash = "#/playground";
    selectApp(session.app_id, session.session_id);
    for (const m of data.messages) {
      addBubble("user", userText(app, m.inputs));
      addBubble("assistant", m.status === "completed" ? answerText(app, m.outputs) : `(${m.status})`);
    }
  };
  $("session-traces").onclick = () => {
    $("traces-session").value = session.session_id;
    state.tracesPage = 0;
    window.location.hash = "#/traces"; // the route loads the filtered list
  };
  $("session-delete").onclick = () =>
    guarded(() =>
      deleteSession(session.session_id, async () => {
        window.location.hash = "#/sessions";
      }),
    );
  const list = clear($("messages"));
  if (!data.messages.length) list.append(el("p", { class: "muted", text: "No messages." }));
  for (const m of data.messages) {
    list.append(
      el(
        "div",
        { class: "message", "data-message": m.id },
        el("div", { class: "bubble user" }, el("div", { class: "bubble-text", text: userText(app, m.inputs) })),
        el(
          "div",
          { class: `bubble assistant ${m.status === "completed" ? "" : "failed"}` },
          el("div", { class: "bubble-text", text: answerText(app, m.outputs) }),
          m.error ? el("div", { class: "bubble-error", text: m.error.message }) : null,
          el(
            "div",
            { class: "bubble-foot" },
            statusBadge(m.status),
            ` ${fmtTime(m.created_at)} `,
            m.duration_ms !== null ? `· ${fmtDuration(m.duration_ms)} ` : "",
            el("a", { href: "#", class: "trace-link", text: "trace", onclick: (e) => {
              e.preventDefault();
              guarded(() => openRunTrace(m.run_id));
            } }),
            " ",
            el("button", {
              class: "danger small",
              text: "Delete",
              onclick: () =>
                guarded(async () => {
                  if (!window.confirm("Delete this message?")) return;
                  await api(`${path}/messages/${m.id}`, { method: "DELETE" });
                  await loadSession(sessionId);
                }),
            }),
          ),
        ),
      ),
    );
  }
  pager($("messages-pager"), state.messagesPage, data.total, (p) => {
    state.messagesPage = p;
    guarded(() => loadSession(sessionId));
  });
}

$("sessions-app").addEventListener("change", () => {
  state.sessionsPage = 0;
  guarded(loadSessions);
});
$("sessions-refresh").addEventListener("click", () => guarded(loadSessions));

// ---------------------------------------------------------------------------------------------
// traces

async function loadTraces() {
  const data = await api("api/v1/traces", {
    params: {
      app_id: $("traces-app").value,
      status: $("traces-status").value,
      session_id: $("traces-session").value.trim(),
      limit: PAGE,
      offset: state.tracesPage * PAGE,
    },
  });
  $("traces-count").textContent = `${data.total} traces`;
  const body = clear($("traces-table").tBodies[0]);
  if (!data.traces.length) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No traces yet." })));
  }
  for (const t of data.traces) {
    const href = `#/traces/${t.trace_id}`;
    body.append(
      el(
        "tr",
        { "data-trace": t.trace_id, class: "clickable", onclick: () => (window.location.hash = href) },
        el("td", { text: fmtTime(t.start_time) }),
        el("td", { text: t.app_id || "" }),
        el("td", {}, statusBadge(t.status)),
        el("td", { text: fmtDuration(t.duration_ms) }),
        el("td", { text: fmtTokens(t.usage) }),
        el("td", { class: "preview", text: t.error ? t.error.message : t.input_preview || "" }),
        el("td", {}, el("a", { href, text: short(t.trace_id) })),
      ),
    );
  }
  pager($("traces-pager"), state.tracesPage, data.total, (p) => {
    state.tracesPage = p;
    guarded(loadTraces);
  });
}

$("traces-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  state.tracesPage = 0;
  guarded(loadTraces);
});

function flatten(spans, depth, out) {
  for (const s of spans) {
    out.push({ span: s, depth });
    flatten(s.children, depth + 1, out);
  }
  return out;
}

async function loadTrace(traceId) {
  const data = await api(`api/v1/traces/${encodeURIComponent(traceId)}`);
  $("trace-id").textContent = data.trace_id;
  const rows = flatten(data.spans, 0, []);
  const starts = rows.map((r) => Date.parse(r.span.start_time));
  const t0 = Math.min(...starts);
  const t1 = Math.max(...rows.map((r) => Date.parse(r.span.end_time)));
  const total = Math.max(t1 - t0, 1);
  const root = data.spans[0];
  $("trace-meta").textContent =
    `${data.span_count} spans · ${root ? fmtDuration(root.duration_ms) : ""} · ${fmtTime(root && root.start_time)}`;
  const tree = clear($("trace-tree"));
  let selected = null;
  const select = (row, span) => {
    if (selected) selected.classList.remove("selected");
    selected = row;
    row.classList.add("selected");
    renderSpan(span);
  };
  rows.forEach(({ span, depth }, i) => {
    const left = ((starts[i] - t0) / total) * 100;
    const width = Math.max((span.duration_ms / total) * 100, 0.5);
    const row = el(
      "div",
      { class: `span-row status-${span.status}`, role: "treeitem", tabindex: 0, "data-span": span.name },
      el(
        "div",
        { class: "span-label", style: `padding-left:${depth * 16 + 4}px` },
        el("span", { class: "span-name", text: span.name }),
        el("span", { class: `badge type-${span.span_type}`, text: span.span_type }),
        span.status !== "completed" ? statusBadge(span.status) : null,
      ),
      el(
        "div",
        { class: "span-bar-track" },
        el("div", { class: "span-bar", style: `left:${left}%;width:${Math.min(width, 100 - left)}%` }),
      ),
      el("div", { class: "span-dur", text: fmtDuration(span.duration_ms) }),
    );
    row.addEventListener("click", () => select(row, span));
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") select(row, span);
    });
    tree.append(row);
    if (i === 0) select(row, span);
  });
}

function section(title, ...content) {
  return el("section", { class: "detail-section" }, el("h3", { text: title }), ...content);
}

function renderSpan(span) {
  const d = clear($("span-detail"));
  d.append(
    el("h2", {}, span.name, " ", el("span", { class: `badge type-${span.span_type}`, text: span.span_type })),
    el(
      "p",
      {},
      statusBadge(span.status),
      ` ${fmtDuration(span.duration_ms)} · started ${fmtTime(span.start_time)}`,
      span.model ? ` · model ${span.model}` : "",
      span.usage ? ` · tokens ${fmtTokens(span.usage)}` : "",
    ),
  );
  if (span.error) {
    d.append(
      el("div", { class: "span-error" }, el("b", { text: span.error.code }), `: ${span.error.message}`),
    );
  }
  // completed spans carry their inputs unless --trace-content is off
  const contentOff = span.status === "completed" && span.attributes["input.value"] === undefined;
  if (span.messages) {
    d.append(
      section(
        "Prompt",
        ...span.messages.map((m) =>
          el(
            "div",
            { class: "prompt-message" },
            el("b", { text: m.role }),
            el("pre", { text: (m.parts || []).map((p) => pretty(p.content)).join("\n") }),
          ),
        ),
      ),
    );
  }
  if (span.inputs !== null && span.inputs !== undefined) {
    d.append(section("Inputs", el("pre", { text: pretty(span.inputs) })));
  }
  if (span.output !== null && span.output !== undefined) {
    d.append(section("Output", el("pre", { text: pretty(span.output) })));
  }
  if (span.documents) {
    d.append(
      section(
        "Recalled chunks",
        ...span.documents.map((doc) =>
          el(
            "div",
            { class: "document" },
            el("b", { text: doc.id || "chunk" }),
            doc.score !== undefined ? ` score ${Number(doc.score).toFixed(3)}` : "",
            doc.content ? el("pre", { text: doc.content }) : null,
          ),
        ),
      ),
    );
  }
  if (contentOff) {
    d.append(el("p", { class: "muted", text: "Inputs and outputs are not recorded (--trace-content off)." }));
  }
  const attrs = el("table", { class: "attrs" });
  for (const [k, v] of Object.entries(span.attributes).sort()) {
    attrs.append(el("tr", {}, el("th", { text: k }), el("td", {}, el("code", { text: pretty(v) }))));
  }
  d.append(el("details", {}, el("summary", { text: "All attributes" }), attrs));
}

// ---------------------------------------------------------------------------------------------
// start

(async () => {
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved !== null) {
    try {
      await signIn(saved);
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showError(err.message);
    }
  }
  await route();
})();
