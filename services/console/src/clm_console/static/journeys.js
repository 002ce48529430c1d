// CLM console: the journeys pages. The list shows every journey with its runs; the journey
// page is the editor (the definition as JSON, checked while typing, with a dry run of the
// entry over the current customers) and the funnel: each step's runs by outcome, who waits
// on it now, and the split arms side by side with the difference of their conversion rates.
// Uses the helpers of console.js; names here start with "journey".
"use strict";

const JOURNEY_EXAMPLE = {
  name: "Onboarding",
  entry: { on: { kind: "transition", to_stage: "onboarding" } },
  exit: { events: ["purchase.refunded"] },
  steps: [
    { id: "welcome", type: "send", action: { channel: "kafka", topic: "clm.demo.actions", payload: '{"template": "welcome", "customer": "{{ customer.id }}"}' } },
    { id: "three_days", type: "wait", seconds: 259200 },
    { id: "second_purchase", type: "branch", condition: "facts.purchases_total >= 2", then: "thanks", else: "tip" },
    { id: "tip", type: "send", action: { channel: "kafka", topic: "clm.demo.actions", payload: '{"template": "tip", "customer": "{{ customer.id }}"}' }, next: "done" },
    { id: "thanks", type: "send", action: { channel: "kafka", topic: "clm.demo.actions", payload: '{"template": "thanks", "customer": "{{ customer.id }}"}' } },
    { id: "done", type: "exit" },
  ],
};

// The definition as people write it (the database keeps JSON keys in its own order):
// name first, steps last, and each step's id and type first; nulls (defaults) left out.
function journeyReadable(value, first = ["name", "description", "id", "type", "entry", "on", "kind"]) {
  if (Array.isArray(value)) return value.map((v) => journeyReadable(v, first));
  if (!value || typeof value !== "object") return value;
  const keys = Object.keys(value).filter((k) => value[k] !== null);
  const rank = (k) => (first.includes(k) ? first.indexOf(k) : k === "steps" ? 99 : 50);
  keys.sort((a, b) => rank(a) - rank(b));
  return Object.fromEntries(keys.map((k) => [k, journeyReadable(value[k], first)]));
}

function journeysPage() {
  if (location.pathname === "/journeys") journeyListPage();
  else journeyPage();
}

async function journeyListPage() {
  const status = $("#journeys-status");
  let list;
  try {
    list = await api("campaigns", "/v1/journeys");
  } catch (err) {
    setStatus(status, `Could not load the journeys: ${err.message}`, "bad");
    return;
  }
  show($("#journeys-empty"), list.length === 0);
  const stats = await Promise.all(list.map((j) => api("campaigns", `/v1/journeys/${encodeURIComponent(j.id)}/stats`).catch(() => null)));
  table(
    $("#journeys"),
    ["Name", "Entry", "Steps", "Entered", "Under way", "Version", "Enabled"],
    list.map((j, k) => {
      const runs = (stats[k] || {}).runs || { entered: 0, by_status: {} };
      const open = (runs.by_status.active || 0) + (runs.by_status.waiting || 0);
      return [
        el("a", { href: `/journeys/${encodeURIComponent(j.id)}`, "data-journey": j.id }, j.definition.name),
        describeOn(j.definition.entry.on),
        String(j.definition.steps.length),
        el("td", { "data-entered": String(runs.entered) }, fmtNumber(runs.entered)),
        fmtNumber(open),
        `v${j.version}`,
        j.enabled ? "yes" : "no",
      ];
    })
  );
}

// A transition entry's dry run: the customers in its stage now for whom its condition
// holds, counted by the segment estimate (the same condition language).
function journeyDryRunCondition(d) {
  const on = (d.entry || {}).on || {};
  if (on.kind !== "transition" || !on.to_stage) return null;
  const extra = (d.entry.condition || "true").trim();
  return `stage == "${on.to_stage}" && (${extra})`;
}

function journeyPage() {
  const form = $("#journey-form");
  const box = $("#j-definition");
  const check = $("#j-check");
  let id = form.dataset.journeyId;
  let seq = 0;
  if (!isAdmin()) box.disabled = true;

  const showProblems = (list) =>
    $("#j-problems").replaceChildren(...list.map((p) => el("div", { "data-path": p.path }, p.path ? `${p.path}: ${p.reason}` : p.reason)));

  const validate = debounce(async () => {
    const mine = ++seq;
    let draft;
    try {
      draft = JSON.parse(box.value);
    } catch (err) {
      setStatus(check, `Not JSON yet: ${err.message}`, "bad");
      showProblems([]);
      return;
    }
    const answer = await api("campaigns", "/v1/journeys/validate", { method: "POST", body: draft }).catch((err) => ({ valid: false, errors: [{ path: "", reason: err.message }] }));
    if (mine !== seq) return;
    check.dataset.valid = String(answer.valid);
    setStatus(check, answer.valid ? "The journey is valid." : `${answer.errors.length} problem(s):`, answer.valid ? "good" : "bad");
    showProblems(answer.valid ? [] : answer.errors);
    const condition = answer.valid && journeyDryRunCondition(draft);
    const dry = $("#j-dry-run");
    delete dry.dataset.count;
    if (!condition) {
      setStatus(dry, answer.valid ? "The dry run counts transition entries only." : "");
      return;
    }
    try {
      const n = await api("campaigns", "/v1/segments/estimate", { method: "POST", body: { condition } });
      if (mine !== seq) return;
      dry.dataset.count = String(n.count);
      setStatus(dry, `Dry run: ${fmtNumber(n.count)} customers are in ${stageLabel(draft.entry.on.to_stage)} now and would match the entry.`, "good");
    } catch (err) {
      setStatus(dry, `Could not count: ${err.message}`, "bad");
    }
  }, 400);
  box.addEventListener("input", validate);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#save-status");
    let body;
    try {
      body = JSON.parse(box.value);
    } catch (err) {
      setStatus(status, `Not JSON: ${err.message}`, "bad");
      return;
    }
    try {
      const saved = id
        ? await api("campaigns", `/v1/journeys/${encodeURIComponent(id)}`, { method: "PUT", body })
        : await api("campaigns", "/v1/journeys", { method: "POST", body });
      if (!id) {
        location.assign(`/journeys/${encodeURIComponent(saved.id)}?saved=1`);
        return;
      }
      setStatus(status, `Saved as version ${saved.version}.`, "good");
      load();
    } catch (err) {
      showProblems(problems(err));
      setStatus(status, "Not saved.", "bad");
    }
  });

  let timer = null;
  const load = async () => {
    clearTimeout(timer);
    timer = setTimeout(() => load().catch(() => {}), 3000); // the funnel moves by itself
    const j = await api("campaigns", `/v1/journeys/${encodeURIComponent(id)}`);
    $("h1").textContent = `Journey: ${j.definition.name}`;
    if (!box.value) box.value = JSON.stringify(journeyReadable(j.definition), null, 2);
    const s = await api("campaigns", `/v1/journeys/${encodeURIComponent(id)}/stats`);
    show($("#funnel-card"), true);
    $("#j-summary").replaceChildren(
      ...[
        ["Entered", el("span", { "data-entered": String(s.runs.entered) }, fmtNumber(s.runs.entered))],
        ["Converted", fmtNumber(s.runs.converted)],
        ["By status", Object.entries(s.runs.by_status).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") || "–"],
        ["Exited", Object.entries(s.runs.exited).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") || "–"],
        ["Version", `v${j.version}, by key ${j.updated_by}`],
      ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])
    );
    table(
      $("#funnel"),
      ["Step", "Type", "Went through", "Outcomes", "Waiting now", "Latest late"],
      j.definition.steps.map((step) => {
        const f = s.steps[step.id] || { through: 0, outcomes: {}, max_late_seconds: 0 };
        return [
          step.id,
          step.type,
          el("td", { "data-step": step.id, "data-through": String(f.through) }, fmtNumber(f.through)),
          Object.entries(f.outcomes).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(", ") || "–",
          fmtNumber(f.waiting || 0),
          f.max_late_seconds >= 1 ? `${fmtNumber(f.max_late_seconds, 1)} s` : "–",
        ];
      })
    );
    const arms = Object.entries(s.splits).flatMap(([step, list]) =>
      list.map((a) => {
        const cmp = Object.entries(a).find(([k]) => k.startsWith("against_"));
        const diff = cmp && cmp[1].difference !== null ? `${fmtPercent(cmp[1].difference)} (p = ${cmp[1].p_value === null ? "–" : cmp[1].p_value.toFixed(3)})` : "–";
        return [step, el("td", { "data-arm": a.arm }, a.arm), fmtNumber(a.runs), fmtNumber(a.converted), a.rate === null ? "–" : fmtPercent(a.rate), cmp ? `${diff} vs ${cmp[0].slice(8)}` : "baseline"];
      })
    );
    show($("#arms-empty"), arms.length === 0);
    table($("#arms"), ["Split", "Arm", "Runs", "Converted", "Rate", "Difference"], arms);
  };

  if (id) {
    if (new URLSearchParams(location.search).get("saved")) setStatus($("#save-status"), "Saved as version 1.", "good");
    load()
      .then(validate)
      .catch((err) => setStatus(check, `Could not load the journey: ${err.message}`, "bad"));
  } else {
    box.value = JSON.stringify(JOURNEY_EXAMPLE, null, 2);
    validate();
  }
}
