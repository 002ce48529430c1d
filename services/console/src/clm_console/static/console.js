// CLM console. No framework: every page is a server-rendered shell and this file fills
// it from the services' APIs through the console's proxy (/api/<service>/v1/...), with
// the key the user signed in with. Data is always put into the page as text, never HTML.
"use strict";

const KEY = "clm.key";
const ROLE = "clm.role";
const NAME = "clm.name";
const CATALOG = JSON.parse(document.getElementById("catalog").textContent);
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

// -- formatting in words a marketer uses ------------------------------------------------

function stageLabel(stage) {
  if (!stage) return "(none)";
  return CATALOG.stage_labels[stage] || stage;
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function fmtNumber(n, digits = 0) {
  if (n === null || n === undefined || n === "") return "–";
  const x = Number(n);
  return isNaN(x) ? String(n) : x.toLocaleString(undefined, { maximumFractionDigits: digits });
}

function fmtPercent(rate) {
  if (rate === null || rate === undefined) return "–";
  return (Number(rate) * 100).toLocaleString(undefined, { maximumFractionDigits: 1 }) + " %";
}

function fmtMoney(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

const CAUSES = {
  event: "something the customer did",
  time: "time passed without activity",
  model_change: "the lifecycle model changed",
  backfill: "loaded from history",
};

const STATUSES = {
  pending: "waiting to be sent",
  sending: "being sent",
  delivered: "sent",
  failed: "failed",
  suppressed: "held back",
  held_out: "holdout (not sent on purpose)",
};

const REASONS = {
  cooldown: "sent recently (do-not-repeat time)",
  frequency_cap: "too many from this trigger",
  global_cap: "too many messages overall",
  holdout: "in the holdout group",
  quiet_hours: "quiet hours",
  delay: "waiting time",
};

// -- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, data) {
    super(detailText(data) || `HTTP ${status}`);
    this.status = status;
    this.data = data;
  }
}

function detailText(data) {
  if (!data) return "";
  if (typeof data === "string") return data;
  const d = data.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  return "";
}

// True when the service does not have this endpoint (yet): FastAPI's own 404/405.
function missing(err) {
  return err instanceof ApiError && ((err.status === 404 && err.data && err.data.detail === "Not Found") || err.status === 405);
}

async function api(service, path, { method = "GET", body, headers = {} } = {}) {
  const key = sessionStorage.getItem(KEY);
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const url = service ? `/api/${service}${path}` : path;
  const res = await fetch(url, init);
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (res.status === 401) {
    signOut("Your key is no longer valid; sign in again.");
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function isAdmin() {
  return sessionStorage.getItem(ROLE) === "admin";
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
  sessionStorage.removeItem(NAME);
  const next = encodeURIComponent(location.pathname + location.search);
  const msg = message ? `&message=${encodeURIComponent(message)}` : "";
  location.assign(`/login?next=${next}${msg}`);
}

function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.className = `status ${kind}`.trim();
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function table(node, headers, rows) {
  node.replaceChildren(
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))))
  );
}

function plot(node, data, layout) {
  // plotly.js (4.8 MB) loads async so the page fills in without waiting for it.
  if (!window.Plotly) {
    $("#plotly").addEventListener("load", () => plot(node, data, layout), { once: true });
    return;
  }
  const base = { margin: { l: 40, r: 20, t: 10, b: 40 }, font: { family: "system-ui, sans-serif", size: 12 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)" };
  window.Plotly.react(node, data, { ...base, ...layout }, { displayModeBar: false, responsive: true });
}

function daysAgo(days) {
  return new Date(Date.now() - days * 86400000).toISOString();
}

// -- sign in ----------------------------------------------------------------------------

function loginPage() {
  const params = new URLSearchParams(location.search);
  const error = $("#login-error");
  if (params.get("message")) error.textContent = params.get("message");
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = $("#key").value.trim();
    error.textContent = "";
    const res = await fetch("/v1/whoami", { headers: { Authorization: `Bearer ${key}` } });
    if (res.status === 401) {
      error.textContent = "This key is not valid, or it was revoked.";
      return;
    }
    if (res.status === 403) {
      error.textContent = "This is a source key, for sending events. Sign in with a read or admin key.";
      return;
    }
    if (!res.ok) {
      error.textContent = `Could not check the key (HTTP ${res.status}). Try again in a moment.`;
      return;
    }
    const who = await res.json();
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(ROLE, who.role);
    sessionStorage.setItem(NAME, who.name);
    const next = params.get("next");
    location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
  });
}

// -- lifecycle overview -----------------------------------------------------------------

function overviewPage() {
  const windowSelect = $("#window");
  const refresh = async () => {
    const days = Number(windowSelect.value);
    const query = `from=${encodeURIComponent(daysAgo(days))}`;
    try {
      const [stages, flows, kpis] = await Promise.all([
        api("stage-engine", "/v1/stages"),
        api("stage-engine", `/v1/flows?${query}`),
        api("stage-engine", `/v1/kpis?${query}`),
      ]);
      drawKpis(kpis, stages, days);
      drawStages(stages);
      drawFlows(flows);
      drawClv(kpis);
      $("#refreshed").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("#refreshed").textContent = `Could not refresh: ${err.message}`;
    }
  };
  windowSelect.addEventListener("change", refresh);
  refresh();
  setInterval(refresh, 5000);
}

function kpi(label, value, hint, id) {
  return el("div", { class: "kpi", "data-kpi": id }, el("div", { class: "kpi-value" }, value), el("div", { class: "kpi-label" }, label), el("div", { class: "kpi-hint" }, hint));
}

function drawKpis(k, stages, days) {
  const period = `over the last ${days} days`;
  $("#kpis").replaceChildren(
    kpi("Customers", fmtNumber(stages.total), "known to CLM today, in any stage", "customers"),
    kpi("Retention", fmtPercent(k.retention_rate), `of buying customers at the start still buying ${period}`, "retention"),
    kpi("Conversion", fmtPercent(k.conversion_rate), `of new prospects who made a first purchase ${period}`, "conversion"),
    kpi("Churn", fmtPercent(k.churn_rate), `of buying customers who lapsed ${period}`, "churn"),
    kpi("NPS", k.nps && k.nps.score !== null ? fmtNumber(k.nps.score, 1) : "–", `net promoter score from ${fmtNumber(k.nps ? k.nps.responses : 0)} answers`, "nps")
  );
}

function drawStages(s) {
  const names = CATALOG.stages;
  plot($("#stages-chart"), [{ type: "bar", x: names.map(stageLabel), y: names.map((n) => s.stages[n] || 0), marker: { color: "#3b6ea8" } }], { height: 260 });
  table($("#stages-table"), ["Stage", "Customers"], names.map((n) => [stageLabel(n), fmtNumber(s.stages[n] || 0)]));
}

function drawFlows(f) {
  const links = f.flows.filter((x) => x.count > 0);
  show($("#flows-empty"), links.length === 0);
  show($("#flows-chart"), links.length > 0);
  if (!links.length) return;
  // Two columns (left: stage left, right: stage entered), so loops like
  // active -> at risk -> active read as two bands instead of a knot.
  const left = [...new Set(links.map((x) => x.from_stage || ""))];
  const right = [...new Set(links.map((x) => x.to_stage))];
  const labels = [...left.map((s) => (s ? stageLabel(s) : "New customer")), ...right.map(stageLabel)];
  plot(
    $("#flows-chart"),
    [
      {
        type: "sankey",
        arrangement: "snap",
        node: { label: labels, pad: 12, thickness: 14, color: "#9bb7d4" },
        link: {
          source: links.map((x) => left.indexOf(x.from_stage || "")),
          target: links.map((x) => left.length + right.indexOf(x.to_stage)),
          value: links.map((x) => x.count),
          color: "rgba(59,110,168,0.35)",
        },
      },
    ],
    { height: 320 }
  );
}

function drawClv(k) {
  const rows = CATALOG.stages.filter((s) => s in (k.average_clv_by_stage || {})).map((s) => [stageLabel(s), fmtMoney(k.average_clv_by_stage[s])]);
  table($("#clv-table"), ["Stage", "Average lifetime value"], rows.length ? rows : [["–", "no scores yet"]]);
}

// -- customer -----------------------------------------------------------------------------

function customersPage() {
  const form = $("#search-form");
  const message = $("#search-message");
  let timer = null;
  const say = (text) => {
    message.textContent = text;
    show(message, Boolean(text));
  };
  const privacy = privacyPanel({ stopRefresh: () => clearInterval(timer) }); // privacy.js

  const open = async (id, { quiet = false } = {}) => {
    try {
      privacy.set(await showCustomer(id));
      if (!quiet) {
        say("");
        history.replaceState(null, "", `/customers?id=${encodeURIComponent(id)}`);
      }
      clearInterval(timer);
      timer = setInterval(() => showCustomer(id).catch(() => {}), 3000);
    } catch (err) {
      show($("#customer"), false);
      say(err.status === 404 ? `No customer with id “${id}”.` : `Could not load the customer: ${err.message}`);
    }
  };

  const search = async (q) => {
    show($("#matches"), false);
    if (!q.includes("@")) return open(q);
    try {
      const found = await api("campaigns", `/v1/customers?email=${encodeURIComponent(q)}&limit=20`);
      const list = found.customers || [];
      if (list.length === 1) return open(list[0].customer_id);
      if (!list.length) return say(`No customer with email “${q}”.`);
      say(`${list.length} customers have this email; choose one.`);
      $("#matches").replaceChildren(...list.map((c) => el("li", {}, el("a", { href: `/customers?id=${encodeURIComponent(c.customer_id)}` }, c.customer_id), ` — ${stageLabel(c.stage)}`)));
      show($("#matches"), true);
    } catch (err) {
      if (missing(err)) say("Search by email is not available on this server yet; search by customer id.");
      else say(`Search failed: ${err.message}`);
    }
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    search($("#q").value.trim());
  });
  const id = new URLSearchParams(location.search).get("id");
  if (id) {
    $("#q").value = id;
    open(id, { quiet: true });
  }
}

async function showCustomer(id) {
  const enc = encodeURIComponent(id);
  const [customer, transitions, score, actions, triggers] = await Promise.all([
    api("stage-engine", `/v1/customers/${enc}`),
    api("stage-engine", `/v1/customers/${enc}/transitions?limit=1000`),
    api("scoring", `/v1/customers/${enc}/score`).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
    api("campaigns", `/v1/actions?customer_id=${enc}&limit=100`).catch(() => []),
    api("campaigns", "/v1/triggers").catch(() => []),
  ]);
  const triggerName = Object.fromEntries(triggers.map((t) => [t.id, t.definition.name]));
  const facts = customer.facts || {};
  $("#c-title").textContent = facts.name ? `${facts.name} (${id})` : id;
  const summary = [
    ["Stage", stageLabel(customer.stage)],
    ["In this stage since", fmtTime(customer.since)],
    ["Email", facts.email || "–"],
    ["Purchases", fmtNumber(facts.purchases_total)],
    ["Revenue", fmtMoney(facts.revenue_total)],
  ];
  $("#c-summary").replaceChildren(...summary.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
  $("#customer").dataset.stage = customer.stage || "";

  const items = transitions.transitions.map((t) => {
    const cause = CAUSES[t.cause] || t.cause;
    const event = t.cause_event ? ` (${t.cause_event.type}, ${t.cause_event.id})` : "";
    return el(
      "li",
      { "data-to": t.to_stage },
      el("div", { class: "when" }, fmtTime(t.at)),
      el("div", {}, el("strong", {}, `${stageLabel(t.from_stage)} → ${stageLabel(t.to_stage)}`)),
      el("div", { class: "muted" }, `because ${cause}${event}`),
      el("details", {}, el("summary", {}, "facts at that moment"), el("pre", {}, JSON.stringify(t.facts, null, 2)))
    );
  });
  $("#timeline").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No stage changes yet.")]));

  const s = score || customer.scores;
  const scoreRows = s
    ? [
        ["Lifetime value", fmtMoney(s.clv)],
        ["Churn risk", fmtPercent(s.churn_probability)],
        ["Chance still active", fmtPercent(s.p_alive)],
        ["Expected purchases", fmtNumber(s.expected_purchases, 2)],
        ["Scored", fmtTime(s.scored_at || s.updated_at)],
      ]
    : [["Scores", "none yet (scores come after the first purchase)"]];
  $("#scores").replaceChildren(...scoreRows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));

  table(
    $("#actions"),
    ["When", "Trigger", "Channel", "Outcome", "Why"],
    actions.length
      ? actions.map((a) => [
          fmtTime(a.created_at),
          el("a", { href: `/triggers/${encodeURIComponent(a.trigger_id)}` }, triggerName[a.trigger_id] || a.trigger_id),
          a.channel,
          el("td", { "data-status": a.status }, STATUSES[a.status] || a.status),
          REASONS[a.suppressed_reason] || REASONS[a.deferred_reason] || a.last_error || "",
        ])
      : [["–", "no messages yet", "", "", ""]]
  );
  table($("#facts"), ["Fact", "Value"], Object.entries(facts).map(([k, v]) => [k, v === null ? "unknown" : typeof v === "object" ? JSON.stringify(v) : String(v)]));
  show($("#customer"), true);
  return { id, name: facts.name, email: facts.email };
}

// -- triggers list ------------------------------------------------------------------------

function describeOn(on) {
  if (on.kind === "transition") {
    const from = on.from_stages && on.from_stages.length ? ` from ${on.from_stages.map(stageLabel).join(", ")}` : "";
    return `enters ${stageLabel(on.to_stage)}${from}`;
  }
  if (on.kind === "event") return `event ${on.event_type}`;
  return `${on.score} ${on.direction === "below" ? "falls below" : "reaches"} ${on.threshold}`;
}

function triggersPage() {
  const load = async () => {
    const list = await api("campaigns", "/v1/triggers");
    show($("#triggers-empty"), list.length === 0);
    table(
      $("#triggers"),
      ["Name", "Fires when", "Sends", "Status", "Version", "Last change", ""],
      list.map((t) => [
        el("a", { href: `/triggers/${encodeURIComponent(t.id)}` }, t.definition.name),
        describeOn(t.definition.on),
        t.definition.action.channel,
        el("td", { "data-enabled": String(t.enabled) }, t.enabled ? "on" : "off"),
        `v${t.version}`,
        fmtTime(t.updated_at),
        el(
          "td",
          {},
          el("a", { href: `/results?trigger=${encodeURIComponent(t.id)}` }, "results"),
          " ",
          isAdmin()
            ? el("button", {
                type: "button",
                class: "small",
                "data-toggle": t.id,
                text: t.enabled ? "Turn off" : "Turn on",
                onclick: async () => {
                  await api("campaigns", `/v1/triggers/${encodeURIComponent(t.id)}/${t.enabled ? "disable" : "enable"}`, { method: "POST" });
                  load();
                },
              })
            : null
        ),
      ])
    );
  };
  load();
}

// -- trigger editor -------------------------------------------------------------------

const HOUR = 3600;
const DAY = 86400;

function num(v) {
  return v === "" || v === null || v === undefined ? null : Number(v);
}

function field(form, name) {
  return form.elements.namedItem(name);
}

function draftFromForm(form) {
  const v = (n) => field(form, n).value;
  const kind = v("on.kind");
  let on;
  if (kind === "transition") {
    const from = $$('input[name="on.from_stages"]:checked', form).map((i) => i.value);
    on = { kind, to_stage: v("on.to_stage"), ...(from.length ? { from_stages: from } : {}) };
  } else if (kind === "event") on = { kind, event_type: v("on.event_type") };
  else on = { kind, score: v("on.score"), threshold: num(v("on.threshold")), direction: v("on.direction") };
  const channel = v("action.channel");
  let action;
  if (channel === "webhook") action = { channel, url: v("action.url"), payload: v("action.payload.webhook") };
  else if (channel === "email") action = { channel, to: v("action.to"), subject: v("action.subject"), body: v("action.body") };
  else action = { channel, topic: v("action.topic"), payload: v("action.payload.kafka") };
  const draft = {
    name: v("name"),
    description: v("description"),
    enabled: field(form, "enabled").checked,
    on,
    condition: v("condition") || "true",
    action,
    delay_seconds: Math.round((num(v("delay")) || 0) * 60),
    cooldown_seconds: Math.round((num(v("cooldown")) || 0) * HOUR),
    holdout_percent: num(v("holdout_percent")) || 0,
    conversion_window_seconds: Math.round((num(v("conversion_days")) ?? 7) * DAY),
  };
  if (num(v("cap.max"))) draft.frequency_cap = { max: num(v("cap.max")), period_seconds: Math.round((num(v("cap.days")) || 7) * DAY) };
  if (v("quiet.start") && v("quiet.end")) draft.quiet_hours = { start: v("quiet.start"), end: v("quiet.end") };
  return draft;
}

function fillForm(form, t) {
  const set = (n, value) => {
    field(form, n).value = value ?? "";
  };
  set("name", t.name);
  set("description", t.description);
  set("on.kind", t.on.kind);
  if (t.on.kind === "transition") {
    set("on.to_stage", t.on.to_stage);
    $$('input[name="on.from_stages"]', form).forEach((i) => (i.checked = (t.on.from_stages || []).includes(i.value)));
  } else if (t.on.kind === "event") set("on.event_type", t.on.event_type);
  else {
    set("on.score", t.on.score);
    set("on.threshold", t.on.threshold);
    set("on.direction", t.on.direction);
  }
  set("condition", t.condition);
  const a = t.action;
  set("action.channel", a.channel);
  if (a.channel === "webhook") {
    set("action.url", a.url);
    set("action.payload.webhook", a.payload);
  } else if (a.channel === "email") {
    set("action.to", a.to);
    set("action.subject", a.subject);
    set("action.body", a.body);
  } else {
    set("action.topic", a.topic);
    set("action.payload.kafka", a.payload);
  }
  set("delay", (t.delay_seconds || 0) / 60);
  set("cooldown", (t.cooldown_seconds || 0) / HOUR);
  set("holdout_percent", t.holdout_percent || 0);
  set("conversion_days", (t.conversion_window_seconds || 7 * DAY) / DAY);
  set("cap.max", t.frequency_cap ? t.frequency_cap.max : "");
  set("cap.days", t.frequency_cap ? t.frequency_cap.period_seconds / DAY : "");
  set("quiet.start", t.quiet_hours ? String(t.quiet_hours.start).slice(0, 5) : "");
  set("quiet.end", t.quiet_hours ? String(t.quiet_hours.end).slice(0, 5) : "");
  syncSections(form);
}

function syncSections(form) {
  const kind = field(form, "on.kind").value;
  const channel = field(form, "action.channel").value;
  $$("[data-kind]", form).forEach((d) => show(d, d.dataset.kind === kind));
  $$("[data-channel]", form).forEach((d) => show(d, d.dataset.channel === channel));
}

// FastAPI 422 details ({loc, msg}) or {errors: [{path, reason}]} as "where: why" lines.
function problems(err) {
  const d = err.data || {};
  if (Array.isArray(d.errors)) return d.errors.map((e) => ({ path: e.path || "", reason: e.reason || e.msg }));
  if (Array.isArray(d.detail))
    return d.detail.map((e) => ({ path: (e.loc || []).filter((p) => p !== "body" && !["transition", "event", "score", "webhook", "email", "kafka"].includes(p)).join("."), reason: e.msg }));
  return [{ path: "", reason: err.message }];
}

function triggerPage() {
  const form = $("#trigger-form");
  let id = form.dataset.triggerId;
  const errors = $("#form-errors");
  const conditionStatus = $("#condition-status");
  let validateAvailable = true;
  let draftPreviewAvailable = true;

  if (!isAdmin()) $$("input, select, textarea", form).forEach((i) => (i.disabled = true));
  form.addEventListener("change", () => syncSections(form));

  const showProblems = (list) => {
    $$(".invalid", form).forEach((n) => n.classList.remove("invalid"));
    errors.replaceChildren(...list.map((p) => el("div", {}, p.path ? `${p.path}: ${p.reason}` : p.reason)));
    for (const p of list) {
      const name = p.path.startsWith("action.payload") ? `action.payload.${field(form, "action.channel").value}` : p.path;
      const input = field(form, name);
      if (input && input.classList) input.classList.add("invalid");
    }
  };

  // Live check of the condition (and the rest of the draft) while the user types.
  const validate = debounce(async () => {
    if (!isAdmin()) return;
    if (!validateAvailable) return;
    setStatus(conditionStatus, "checking…");
    try {
      const answer = await api("campaigns", "/v1/triggers/validate", { method: "POST", body: draftFromForm(form) });
      const list = (answer && answer.errors) || [];
      const cond = list.filter((p) => p.path === "condition");
      setStatus(conditionStatus, cond.length ? `✗ ${cond[0].reason}` : "✓ condition is valid", cond.length ? "bad" : "good");
      showProblems(list);
    } catch (err) {
      if (missing(err)) {
        validateAvailable = false;
        setStatus(conditionStatus, "The condition is checked when you save.");
      } else if (err.status === 422) {
        const list = problems(err);
        const cond = list.filter((p) => p.path === "condition");
        setStatus(conditionStatus, cond.length ? `✗ ${cond[0].reason}` : "✓ condition is valid", cond.length ? "bad" : "good");
        showProblems(list);
      } else setStatus(conditionStatus, `Could not check: ${err.message}`, "bad");
    }
  }, 400);
  form.addEventListener("input", validate);

  const loadVersions = async () => {
    const versions = await api("campaigns", `/v1/triggers/${encodeURIComponent(id)}/versions`);
    table(
      $("#versions"),
      ["Version", "Change", "By key", "When", ""],
      versions
        .slice()
        .reverse()
        .map((v) => [
          `v${v.version}`,
          v.change,
          v.changed_by,
          fmtTime(v.changed_at),
          el(
            "td",
            {},
            el("details", {}, el("summary", {}, "definition"), el("pre", {}, JSON.stringify(v.definition, null, 2))),
            isAdmin() ? el("button", { type: "button", class: "small", text: "Load into form", onclick: () => fillForm(form, v.definition) }) : null
          ),
        ])
    );
    show($("#versions-card"), true);
  };

  const load = async () => {
    const t = await api("campaigns", `/v1/triggers/${encodeURIComponent(id)}`);
    fillForm(form, t.definition);
    field(form, "enabled").checked = t.enabled;
    form.dataset.version = t.version;
    $("h1").textContent = `Trigger: ${t.definition.name}`;
    await loadVersions();
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#save-status");
    setStatus(status, "saving…");
    showProblems([]);
    try {
      const body = draftFromForm(form);
      let saved;
      if (id) {
        saved = await api("campaigns", `/v1/triggers/${encodeURIComponent(id)}`, { method: "PUT", body, headers: { "If-Match": `"${form.dataset.version}"` } });
      } else {
        saved = await api("campaigns", "/v1/triggers", { method: "POST", body });
        id = saved.id;
        history.replaceState(null, "", `/triggers/${encodeURIComponent(id)}`);
      }
      form.dataset.version = saved.version;
      const secret = saved.secret ? ` Webhook signing secret (shown only now): ${saved.secret}` : "";
      setStatus(status, `Saved as version ${saved.version}.${secret}`, "good");
      $("h1").textContent = `Trigger: ${saved.definition.name}`;
      await loadVersions();
    } catch (err) {
      if (err.status === 412) setStatus(status, "Someone else changed this trigger meanwhile; reload the page to see their version.", "bad");
      else {
        setStatus(status, "Not saved: fix the problems above.", "bad");
        showProblems(problems(err));
      }
    }
  });

  $("#preview-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#preview-status");
    const customer = $("#preview-customer").value.trim();
    show($("#preview-result"), false);
    setStatus(status, "rendering…");
    let result = null;
    try {
      if (draftPreviewAvailable) {
        try {
          result = await api("campaigns", "/v1/triggers/preview", { method: "POST", body: { definition: draftFromForm(form), customer_id: customer } });
        } catch (err) {
          if (!missing(err)) throw err;
          draftPreviewAvailable = false;
        }
      }
      if (!result) {
        if (!id) {
          setStatus(status, "Save the trigger first, then preview it.", "bad");
          return;
        }
        result = await api("campaigns", `/v1/triggers/${encodeURIComponent(id)}/preview`, { method: "POST", body: { customer_id: customer } });
      }
    } catch (err) {
      setStatus(status, err.status === 404 ? `Customer “${customer}” is not known yet.` : `Cannot render: ${err.message}`, "bad");
      return;
    }
    setStatus(status, draftPreviewAvailable ? "Preview of the form as it is now:" : "Preview of the saved version:");
    const target = Object.entries(result.target || {}).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    $("#preview-facts").replaceChildren(
      el("dt", {}, "Condition holds for this customer"),
      el("dd", { id: "preview-matches" }, result.condition_matches ? "yes — the trigger would fire" : "no — the trigger would not fire"),
      el("dt", {}, "Sent to"),
      el("dd", {}, target || "–")
    );
    $("#preview-payload").textContent = result.payload_json !== null && result.payload_json !== undefined ? JSON.stringify(result.payload_json, null, 2) : result.payload;
    show($("#preview-result"), true);
  });

  syncSections(form);
  if (id) load().catch((err) => showProblems([{ path: "", reason: `Could not load the trigger: ${err.message}` }]));
}

// -- trigger results ------------------------------------------------------------------

function resultsPage() {
  let selected = new URLSearchParams(location.search).get("trigger");
  let seriesAvailable = true;

  const loadList = async () => {
    const list = await api("campaigns", "/v1/triggers");
    show($("#results-empty"), list.length === 0);
    const stats = await Promise.all(list.map((t) => api("campaigns", `/v1/triggers/${encodeURIComponent(t.id)}/stats`).catch(() => null)));
    table(
      $("#results"),
      ["Trigger", "Matched", "Sent", "Arrived", "Failed", "Held back", "Holdout", "Uplift"],
      list.map((t, i) => {
        const s = stats[i] || {};
        return [
          el("a", { href: `?trigger=${encodeURIComponent(t.id)}`, "data-trigger": t.id, onclick: (ev) => (ev.preventDefault(), select(t.id)) }, t.definition.name),
          fmtNumber(s.matched),
          fmtNumber(s.fired),
          fmtNumber(s.delivered),
          fmtNumber(s.failed),
          fmtNumber(s.suppressed ? s.suppressed.total : null),
          fmtNumber(s.held_out),
          s.uplift && s.uplift.absolute !== null && s.uplift.absolute !== undefined ? `${s.uplift.absolute >= 0 ? "+" : ""}${fmtPercent(s.uplift.absolute)}` : "–",
        ];
      })
    );
    if (!selected && list.length) selected = list[0].id;
    if (selected) select(selected);
  };

  const select = async (triggerId) => {
    selected = triggerId;
    history.replaceState(null, "", `/results?trigger=${encodeURIComponent(triggerId)}`);
    const [t, s] = await Promise.all([api("campaigns", `/v1/triggers/${encodeURIComponent(triggerId)}`), api("campaigns", `/v1/triggers/${encodeURIComponent(triggerId)}/stats`)]);
    $("#detail-title").textContent = t.definition.name;
    $("#detail-kpis").replaceChildren(
      kpi("Matched", fmtNumber(s.matched), "customers the trigger applied to", "matched"),
      kpi("Sent", fmtNumber(s.fired), "messages sent or being sent", "fired"),
      kpi("Arrived", fmtNumber(s.delivered), "accepted by the receiving system", "delivered"),
      kpi("Failed", fmtNumber(s.failed), "gave up after retries", "failed"),
      kpi("Held back", fmtNumber(s.suppressed.total), "stopped by a limit", "suppressed"),
      kpi("Holdout", fmtNumber(s.held_out), "kept out on purpose, for comparison", "held_out")
    );
    const reasons = Object.entries(s.suppressed.by_reason || {});
    const deferred = Object.entries(s.deferred || {});
    table(
      $("#suppressed"),
      ["Reason", "Messages"],
      [...reasons.map(([r, n]) => [REASONS[r] || r, fmtNumber(n)]), ...deferred.map(([r, n]) => [`delayed: ${REASONS[r] || r}`, fmtNumber(n)])].concat(reasons.length || deferred.length ? [] : [["none", "0"]])
    );
    const c = s.conversions;
    table($("#conversions"), ["Group", "Customers", "Bought", "Rate"], [
      ["Got the message", fmtNumber(c.treated.actions), fmtNumber(c.treated.converted), fmtPercent(c.treated.rate)],
      ["Holdout (no message)", fmtNumber(c.holdout.actions), fmtNumber(c.holdout.converted), fmtPercent(c.holdout.rate)],
      ["Uplift", "", "", s.uplift && s.uplift.absolute !== null ? `${fmtPercent(s.uplift.absolute)} (${s.uplift.relative !== null ? fmtPercent(s.uplift.relative) + " relative" : "no holdout purchases"})` : "–"],
    ]);
    show($("#detail"), true);
    drawSeries();
  };

  const drawSeries = async () => {
    const message = $("#series-message");
    if (!selected || !seriesAvailable) return;
    const days = Number($("#series-window").value);
    const bucket = days <= 1 ? "hour" : "day";
    try {
      const s = await api("campaigns", `/v1/triggers/${encodeURIComponent(selected)}/stats/series?from=${encodeURIComponent(daysAgo(days))}&bucket=${bucket}`);
      const x = s.points.map((p) => p.at);
      const line = (name, key) => ({ type: "scatter", mode: "lines+markers", name, x, y: s.points.map((p) => p[key] || 0) });
      show($("#series-chart"), true);
      plot($("#series-chart"), [line("sent", "fired"), line("arrived", "delivered"), line("failed", "failed"), line("held back", "suppressed"), line("holdout", "held_out"), line("conversions (messaged)", "converted_treated"), line("conversions (holdout)", "converted_holdout")], { height: 300, legend: { orientation: "h" } });
      show(message, false);
    } catch (err) {
      if (missing(err)) seriesAvailable = false;
      show($("#series-chart"), false);
      message.textContent = missing(err) ? "Results over time are not available on this server yet." : `Could not load results over time: ${err.message}`;
      show(message, true);
    }
  };
  $("#series-window").addEventListener("change", drawSeries);
  loadList();
}

// -- dead letters -----------------------------------------------------------------------

function deadlettersPage() {
  const status = $("#dl-status");
  const message = $("#dl-message");
  const load = async () => {
    setStatus(status, "loading…");
    try {
      const answer = await api("ingest", "/v1/deadletters?limit=100");
      const list = answer.deadletters || [];
      show($("#dl-empty"), list.length === 0);
      table(
        $("#deadletters"),
        ["When", "Why", "From", "Event as received", ""],
        list.map((d) => [
          fmtTime(d.at),
          d.reason,
          `${d.source_topic || "?"} #${d.source_partition ?? "?"}/${d.source_offset ?? "?"}`,
          el("td", {}, isAdmin() ? el("textarea", { class: "payload", rows: 4, spellcheck: "false", "aria-label": "event to replay" }, d.payload) : el("pre", { class: "payload" }, d.payload)),
          el(
            "td",
            {},
            d.replayed_at ? el("div", { class: "muted" }, `replayed ${fmtTime(d.replayed_at)}`) : null,
            isAdmin()
              ? el("button", {
                  type: "button",
                  class: "small",
                  "data-replay": d.id,
                  text: d.replayed_at ? "Replay again" : "Replay",
                  onclick: async (ev) => {
                    ev.target.disabled = true;
                    try {
                      // Replay the event as it arrived, or as corrected in the box.
                      const edited = ev.target.closest("tr").querySelector("textarea.payload").value;
                      const body = edited !== d.payload ? { payload: edited } : {};
                      await api("ingest", `/v1/deadletters/${encodeURIComponent(d.id)}/replay`, { method: "POST", body });
                      await load();
                      setStatus(status, "Sent again: it goes through the same checks as any new event.", "good");
                    } catch (err) {
                      ev.target.disabled = false;
                      setStatus(status, `Replay failed: ${err.message}`, "bad");
                    }
                  },
                })
              : null
          ),
        ])
      );
      setStatus(status, `${list.length} shown, newest first.`);
      show(message, false);
    } catch (err) {
      setStatus(status, "");
      message.textContent = missing(err) ? "Dead letters cannot be listed on this server yet (ingest has no dead-letter endpoint)." : `Could not load dead letters: ${err.message}`;
      show(message, true);
    }
  };
  $("#dl-refresh").addEventListener("click", load);
  load();
}

// -- lifecycle model ------------------------------------------------------------------

function modelPage() {
  const form = $("#model-form");
  const rules = $("#rules");
  const errors = $("#model-errors");
  const status = $("#model-status");
  const save = $("#save-model");
  let dryRunAvailable = true;
  let checked = null; // JSON of the draft the last successful check was for

  const ruleRow = (r) => {
    const to = el("select", { name: "to", "aria-label": "new stage" }, CATALOG.stages.map((s) => el("option", { value: s, selected: s === r.to }, stageLabel(s))));
    if (r.to && !CATALOG.stages.includes(r.to)) to.append(el("option", { value: r.to, selected: true }, r.to));
    const tr = el(
      "tr",
      {},
      el("td", {}, el("input", { name: "name", value: r.name || "", "aria-label": "rule name" })),
      el("td", {}, el("input", { name: "from", value: (r.from || []).join(", "), placeholder: "any stage", "aria-label": "only from stages" })),
      el("td", {}, to),
      el("td", {}, el("textarea", { name: "when", rows: 2, spellcheck: "false", "aria-label": "condition" }, r.when || "")),
      el(
        "td",
        { class: "admin-only row-tools" },
        el("button", { type: "button", class: "small", title: "move up", text: "↑", onclick: () => tr.previousElementSibling && tr.parentNode.insertBefore(tr, tr.previousElementSibling) }),
        el("button", { type: "button", class: "small", title: "move down", text: "↓", onclick: () => tr.nextElementSibling && tr.parentNode.insertBefore(tr.nextElementSibling, tr) }),
        el("button", { type: "button", class: "small", title: "remove", text: "✕", onclick: () => (tr.remove(), changed()) })
      )
    );
    return tr;
  };

  const draft = () => ({
    stages: $("#m-stages").value.split(",").map((s) => s.trim()).filter(Boolean),
    rules: $$("tbody tr", rules).map((tr) => {
      const f = tr.querySelector('[name="from"]').value.split(",").map((s) => s.trim()).filter(Boolean);
      return {
        name: tr.querySelector('[name="name"]').value.trim(),
        to: tr.querySelector('[name="to"]').value,
        when: tr.querySelector('[name="when"]').value,
        ...(f.length ? { from: f } : {}),
      };
    }),
  });

  const changed = () => {
    checked = null;
    save.disabled = dryRunAvailable;
    show($("#dry-run"), false);
    setStatus(status, dryRunAvailable ? "Check the change before saving it." : "");
  };
  form.addEventListener("input", changed);

  const showErrors = (list) => {
    $$(".invalid", form).forEach((n) => n.classList.remove("invalid"));
    errors.replaceChildren(...list.map((p) => el("div", {}, p.path ? `${p.path}: ${p.reason}` : p.reason)));
    for (const p of list) {
      const m = /^rules\[(\d+)\]\.(\w+)/.exec(p.path || "");
      if (m) {
        const row = $$("tbody tr", rules)[Number(m[1])];
        const input = row && row.querySelector(`[name="${m[2]}"]`);
        if (input) input.classList.add("invalid");
      }
    }
  };

  const render = (model) => {
    $("#m-stages").value = model.stages.join(", ");
    $("#m-version").textContent = `v${model.version}, saved ${fmtTime(model.created_at)} by ${model.created_by || "CLM (default)"}`;
    rules.replaceChildren(
      el("thead", {}, el("tr", {}, ["Rule", "Only from", "Moves to", "When (CEL)", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, model.rules.map(ruleRow))
    );
    if (model.variables) table($("#variables"), ["Name", "Type", "Meaning"], Object.entries(model.variables).map(([n, v]) => [n, v.type, v.meaning]));
    if (!isAdmin()) $$("input, select, textarea", form).forEach((i) => (i.disabled = true));
  };

  const loadVersions = async () => {
    const v = await api("stage-engine", "/v1/lifecycle-model/versions");
    table($("#model-versions"), ["Version", "Saved", "By key", "Rules"], v.versions.map((m) => [`v${m.version}`, fmtTime(m.created_at), m.created_by || "CLM (default)", fmtNumber(m.rules.length)]));
  };

  $("#add-rule").addEventListener("click", () => {
    $("tbody", rules).append(ruleRow({ name: "", to: "active", when: "" }));
    changed();
  });

  $("#check").addEventListener("click", async () => {
    showErrors([]);
    const body = draft();
    setStatus(status, "checking…");
    try {
      const r = await api("stage-engine", "/v1/lifecycle-model/dry-run", { method: "POST", body });
      checked = JSON.stringify(body);
      $("#dry-run-summary").textContent = `The rules are valid. Saving would move ${fmtNumber(r.would_move)} of ${fmtNumber(r.customers_evaluated)} customers to another stage.`;
      table($("#dry-run-moves"), ["From", "To", "Customers"], (r.moves || []).map((m) => [stageLabel(m.from_stage), stageLabel(m.to_stage), fmtNumber(m.count)]));
      show($("#dry-run"), true);
      save.disabled = false;
      setStatus(status, "Checked: you can save.", "good");
    } catch (err) {
      if (missing(err)) {
        dryRunAvailable = false;
        save.disabled = false;
        setStatus(status, "Counting the customers a change moves is not available on this server yet; the rules are still checked when you save.", "bad");
      } else {
        save.disabled = true;
        setStatus(status, "Not valid: fix the problems above.", "bad");
        showErrors(problems(err));
      }
    }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = draft();
    if (dryRunAvailable && checked !== JSON.stringify(body)) {
      setStatus(status, "Check the change before saving it.", "bad");
      return;
    }
    try {
      const saved = await api("stage-engine", "/v1/lifecycle-model", { method: "PUT", body });
      setStatus(status, `Saved as version ${saved.version}. Customers are moved in the background.`, "good");
      render(saved);
      save.disabled = true;
      loadVersions();
    } catch (err) {
      setStatus(status, "Not saved: fix the problems above.", "bad");
      showErrors(problems(err));
    }
  });

  api("stage-engine", "/v1/lifecycle-model").then(render);
  loadVersions();
}

// -- start ------------------------------------------------------------------------------

const PAGES = {
  login: loginPage,
  overview: overviewPage,
  customers: customersPage,
  triggers: () => (location.pathname === "/triggers" ? triggersPage() : triggerPage()),
  results: resultsPage,
  journeys: () => journeysPage(), // journeys.js
  segments: () => segmentsPage(), // segments.js
  rfm: () => rfmPage(), // rfm.js
  deadletters: deadlettersPage,
  model: modelPage,
};

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page !== "login") {
    if (!sessionStorage.getItem(KEY)) {
      signOut();
      return;
    }
    const role = sessionStorage.getItem(ROLE);
    document.body.dataset.role = role;
    $("#who").textContent = `${sessionStorage.getItem(NAME)} (${role === "admin" ? "admin" : "read-only"})`;
    $("#sign-out").addEventListener("click", () => signOut());
    show($("#readonly-note"), role !== "admin");
  }
  (PAGES[page] || (() => {}))();
});
