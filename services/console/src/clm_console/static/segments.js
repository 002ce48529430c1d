// CLM console: the segments pages. The list shows every segment with its size and, while
// it runs, the recompute of its members; the segment page is the editor (with a live
// count of the customers a condition matches) and the members, a page at a time by
// customer id, filtered by stage and RFM segment, exported as CSV.
// Uses the helpers of console.js (el, $, api, problems, ...), which runs before any of this
// is called; names here start with "segment" so they never shadow one of console.js.
"use strict";

const SEGMENT_PAGE_SIZE = 25;

function segmentsPage() {
  if (location.pathname === "/segments") segmentListPage();
  else segmentPage();
}

function segmentRunning(s) {
  return Boolean(s.recompute && !s.recompute.finished_at);
}

// The background recompute of a segment's members, in words and as a bar.
function segmentRecompute(r) {
  if (!r) return ["–"];
  if (r.finished_at) return [`done ${fmtTime(r.finished_at)}`];
  const part = r.total ? `${fmtNumber(r.done)} of ${fmtNumber(r.total)} customers` : `${fmtNumber(r.done)} customers so far`;
  return [el("progress", { max: r.total || 1, value: r.total ? r.done : 0, "aria-label": "recompute" }), ` recomputing: ${part}`];
}

function segmentCount(n) {
  return `${fmtNumber(n)} ${Number(n) === 1 ? "customer" : "customers"}`;
}

// FastAPI's "Value error, " prefix says nothing to the person reading the reason.
function segmentProblems(err) {
  return problems(err).map((p) => ({ path: p.path, reason: String(p.reason).replace(/^Value error, /, "") }));
}

// -- the list -----------------------------------------------------------------------------

function segmentListPage() {
  const status = $("#segments-status");
  const message = $("#segments-message");
  const deleted = new URLSearchParams(location.search).get("deleted");
  if (deleted) setStatus(status, `Deleted the segment “${deleted}”.`, "good");
  let timer = null;

  const load = async () => {
    clearTimeout(timer);
    let list;
    try {
      list = await api("campaigns", "/v1/segments");
    } catch (err) {
      message.textContent = missing(err) ? "Segments are not available on this server yet." : `Could not load the segments: ${err.message}`;
      show(message, true);
      timer = setTimeout(load, 10000);
      return;
    }
    show(message, false);
    show($("#segments-empty"), list.length === 0);
    table(
      $("#segments"),
      ["Name", "Description", "Members", "Members recomputed", "Version", "Last change"],
      list.map((s) => [
        el("a", { href: `/segments/${encodeURIComponent(s.id)}`, "data-segment": s.id }, s.name),
        s.description || "",
        el("td", { "data-size": String(s.size) }, fmtNumber(s.size)),
        el("td", { "data-recompute": segmentRunning(s) ? "running" : "done" }, segmentRecompute(s.recompute)),
        `v${s.version}`,
        fmtTime(s.updated_at),
      ])
    );
    // Follow a running recompute closely; otherwise look again now and then.
    timer = setTimeout(load, list.some(segmentRunning) ? 1000 : 10000);
  };
  load();
}

// -- one segment: editor and members --------------------------------------------------

function segmentPage() {
  const form = $("#segment-form");
  const errors = $("#form-errors");
  const estimate = $("#estimate");
  const status = $("#save-status");
  const input = (name) => form.elements.namedItem(name);
  let id = form.dataset.segmentId;
  let current = null; // the segment as last read
  let seq = 0; // estimates answered out of order: only the latest draft's counts
  let estimateAvailable = true;

  if (!isAdmin()) $$("input, textarea", form).forEach((i) => (i.disabled = true));

  const showProblems = (list) => {
    $$(".invalid", form).forEach((n) => n.classList.remove("invalid"));
    errors.replaceChildren(...list.map((p) => el("div", { "data-path": p.path }, p.path ? `${p.path}: ${p.reason}` : p.reason)));
    for (const p of list) {
      const field = p.path && input(p.path);
      if (field && field.classList) field.classList.add("invalid");
    }
  };

  const draft = () => ({ name: input("name").value.trim(), description: input("description").value, condition: input("condition").value });

  // The live estimate: how many customers the condition in the box matches right now.
  const count = debounce(async () => {
    if (!isAdmin() || !estimateAvailable) return;
    const condition = input("condition").value;
    const mine = ++seq;
    delete estimate.dataset.count;
    input("condition").classList.remove("invalid");
    if (!condition.trim()) {
      setStatus(estimate, "Type a condition to see how many customers it matches.");
      return;
    }
    setStatus(estimate, "counting…");
    try {
      const answer = await api("campaigns", "/v1/segments/estimate", { method: "POST", body: { condition } });
      if (mine !== seq) return;
      estimate.dataset.count = String(answer.count);
      setStatus(estimate, `${segmentCount(answer.count)} match this condition now.`, "good");
    } catch (err) {
      if (mine !== seq) return;
      if (missing(err)) {
        estimateAvailable = false;
        setStatus(estimate, "Counting a draft is not available on this server yet; the condition is checked when you save.");
      } else if (err.status === 422) {
        const list = segmentProblems(err);
        setStatus(estimate, list.map((p) => (p.path ? `${p.path}: ${p.reason}` : p.reason)).join("; "), "bad");
        for (const p of list) if (p.path && input(p.path)) input(p.path).classList.add("invalid");
      } else setStatus(estimate, `Could not count: ${err.message}`, "bad");
    }
  }, 400);
  input("condition").addEventListener("input", count);

  const fill = (s) => {
    input("name").value = s.name;
    input("description").value = s.description || "";
    input("condition").value = s.condition;
  };

  const summarize = (s) => {
    $("h1").textContent = `Segment: ${s.name}`;
    $("#s-summary").replaceChildren(
      ...[
        ["Members now", el("span", { "data-size": String(s.size) }, fmtNumber(s.size))],
        ["Members recomputed", el("span", { "data-recompute": segmentRunning(s) ? "running" : "done" }, segmentRecompute(s.recompute))],
        ["Version", `v${s.version}, saved ${fmtTime(s.updated_at)} by key ${s.updated_by}`],
      ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])
    );
  };

  // -- members, a page at a time: `pages` holds the `after` of each page shown so far.
  let pages = [""];
  const filters = () => {
    const q = new URLSearchParams();
    if ($("#f-stage").value) q.set("stage", $("#f-stage").value);
    if ($("#f-rfm").value) q.set("rfm_segment", $("#f-rfm").value);
    return q;
  };
  const exportUrl = () => {
    const q = filters();
    q.set("format", "csv");
    return `/api/campaigns/v1/segments/${encodeURIComponent(id)}/members?${q}`;
  };
  let next = null;
  const loadMembers = async () => {
    const q = filters();
    q.set("limit", String(SEGMENT_PAGE_SIZE));
    if (pages[pages.length - 1]) q.set("after", pages[pages.length - 1]);
    $("#export").href = exportUrl();
    const memberStatus = $("#members-status");
    try {
      const answer = await api("campaigns", `/v1/segments/${encodeURIComponent(id)}/members?${q}`);
      const list = answer.members || [];
      next = answer.next;
      table(
        $("#members"),
        ["Customer", "Name", "Email", "Stage", "RFM segment", "Member since"],
        list.map((m) => [
          el("a", { href: `/customers?id=${encodeURIComponent(m.customer_id)}`, "data-member": m.customer_id }, m.customer_id),
          m.name || "–",
          m.email || "–",
          el("td", { "data-stage": m.stage || "" }, stageLabel(m.stage)),
          el("td", { "data-rfm": m.rfm_segment || "" }, m.rfm_segment || "–"),
          fmtTime(m.member_since),
        ])
      );
      const filtered = q.has("stage") || q.has("rfm_segment");
      setStatus(memberStatus, list.length || pages.length > 1 ? "" : filtered ? "No member matches these filters." : "No members (yet).");
      $("#members-page").textContent = list.length ? `Page ${pages.length}: ${list.length} ${list.length === 1 ? "member" : "members"}, by customer id.` : "";
    } catch (err) {
      next = null;
      setStatus(memberStatus, `Could not load the members: ${err.message}`, "bad");
    }
    $("#members-next").disabled = !next;
    $("#members-prev").disabled = pages.length === 1;
    $("#members-first").disabled = pages.length === 1;
  };
  const restart = () => {
    pages = [""];
    loadMembers();
  };
  $("#f-stage").addEventListener("change", restart);
  $("#f-rfm").addEventListener("change", restart);
  $("#members-first").addEventListener("click", restart);
  $("#members-next").addEventListener("click", () => {
    if (!next) return;
    pages.push(next);
    loadMembers();
  });
  $("#members-prev").addEventListener("click", () => {
    if (pages.length > 1) pages.pop();
    loadMembers();
  });

  // Export: the proxy needs the key in a header, which a plain link cannot send.
  $("#export").addEventListener("click", async (ev) => {
    ev.preventDefault();
    const memberStatus = $("#members-status");
    setStatus(memberStatus, "exporting…");
    try {
      const res = await fetch(exportUrl(), { headers: { Accept: "text/csv", Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } });
      if (!res.ok) {
        const text = await res.text();
        let data = text;
        try {
          data = JSON.parse(text);
        } catch {}
        throw new ApiError(res.status, data);
      }
      const named = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "");
      segmentSave(named ? named[1] : `${id}.csv`, await res.blob());
      setStatus(memberStatus, "Exported the members (with these filters) as CSV.", "good");
    } catch (err) {
      setStatus(memberStatus, `Export failed: ${err.message}`, "bad");
    }
  });

  const loadVersions = async () => {
    try {
      const versions = await api("campaigns", `/v1/segments/${encodeURIComponent(id)}/versions`);
      table(
        $("#versions"),
        ["Version", "Change", "Condition", "By key", "When", ""],
        versions
          .slice()
          .reverse()
          .map((v) => [
            `v${v.version}`,
            v.change,
            el("td", {}, el("code", {}, v.condition)),
            v.changed_by,
            fmtTime(v.changed_at),
            el("td", {}, isAdmin() && v.change !== "deleted" ? el("button", { type: "button", class: "small secondary", text: "Load into form", onclick: () => (fill(v), count()) }) : null),
          ])
      );
      show($("#versions-card"), true);
    } catch {
      show($("#versions-card"), false);
    }
  };

  // Members over the last 30 days, where campaigns keeps their history (`history`: a
  // sample per interval); the size now ends the line.
  const drawSizes = async () => {
    let answer;
    try {
      answer = await api("campaigns", `/v1/segments/${encodeURIComponent(id)}/size?from=${encodeURIComponent(daysAgo(30))}&to=${encodeURIComponent(new Date().toISOString())}`);
    } catch {
      return; // the size above is all there is
    }
    const history = Array.isArray(answer.history) ? answer.history : [];
    show($("#size-card"), history.length > 0);
    if (!history.length) return;
    const x = [...history.map((p) => p.at), new Date().toISOString()];
    const y = [...history.map((p) => p.members), answer.size];
    plot($("#size-chart"), [{ type: "scatter", mode: "lines+markers", x, y, line: { color: "#3b6ea8", shape: "hv" } }], { height: 180, margin: { l: 50, r: 20, t: 10, b: 30 }, yaxis: { rangemode: "tozero" } });
  };

  // While the members are being recomputed, follow it; then show the new members.
  let timer = null;
  let savedAt = 0;
  const follow = async () => {
    clearTimeout(timer);
    let s;
    try {
      s = await api("campaigns", `/v1/segments/${encodeURIComponent(id)}`);
    } catch (err) {
      // Campaigns may answer the save before its transaction is visible: a 404 just after
      // saving is asked again, not taken for a deleted segment.
      if (err.status === 404 && savedAt && Date.now() - savedAt < 5000) {
        timer = setTimeout(follow, 500);
        return;
      }
      if (err.status === 404) {
        showProblems([{ path: "", reason: `No segment with id “${id}”: it does not exist, or it was deleted.` }]);
        show($("#members-card"), false);
        return;
      }
      timer = setTimeout(follow, 5000);
      return;
    }
    const before = current;
    current = s;
    summarize(s);
    const finished = before && segmentRunning(before) && !segmentRunning(s);
    if (!before || finished || before.size !== s.size) {
      loadMembers();
      drawSizes();
    }
    timer = setTimeout(follow, segmentRunning(s) ? 1000 : 10000);
  };

  const open = async () => {
    show($("#delete"), true);
    show($("#members-card"), true);
    await follow();
    if (current) {
      fill(current);
      loadVersions();
      count();
    }
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!isAdmin()) return;
    setStatus(status, "saving…");
    showProblems([]);
    try {
      const body = draft();
      const saved = id
        ? await api("campaigns", `/v1/segments/${encodeURIComponent(id)}`, { method: "PUT", body })
        : await api("campaigns", "/v1/segments", { method: "POST", body });
      const created = !id;
      id = saved.id;
      savedAt = Date.now();
      if (created) history.replaceState(null, "", `/segments/${encodeURIComponent(id)}`);
      setStatus(status, `Saved as version ${saved.version}. Its members are recomputed in the background.`, "good");
      current = null;
      pages = [""];
      if (created) await open();
      else await follow();
      loadVersions();
    } catch (err) {
      const list = segmentProblems(err);
      setStatus(status, `Not saved: ${list.length === 1 && !list[0].path ? list[0].reason : "fix the problems above."}`, "bad");
      showProblems(list);
    }
  });

  $("#delete").addEventListener("click", async () => {
    const name = current ? current.name : id;
    if (!confirm(`Delete the segment “${name}”? Its members list goes with it; its versions stay readable.`)) return;
    setStatus(status, "deleting…");
    try {
      await api("campaigns", `/v1/segments/${encodeURIComponent(id)}`, { method: "DELETE" });
      clearTimeout(timer);
      location.assign(`/segments?deleted=${encodeURIComponent(name)}`);
    } catch (err) {
      setStatus(status, `Not deleted: ${err.message}`, "bad");
    }
  });

  if (id) open();
  else {
    $("h1").textContent = "New segment";
    // Opened with a draft (the RFM page links here with its segment's condition).
    const given = new URLSearchParams(location.search);
    if (given.get("name")) input("name").value = given.get("name");
    if (given.get("condition")) input("condition").value = given.get("condition");
    if (given.get("condition")) count();
    else setStatus(estimate, isAdmin() ? "Type a condition to see how many customers it matches." : "");
  }
}

function segmentSave(name, blob) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
