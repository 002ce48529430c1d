// CLM console: the RFM page. Scoring's R x F grid as a heatmap (customers or revenue per
// cell, each cell named by its segment), the cut points between the quintiles, and the
// customers who moved between RFM segments over a chosen period, largest moves first.
// Uses the helpers of console.js (el, $, api, ...), which runs before any of this is called;
// names here start with "rfm" so they never shadow one of console.js.
"use strict";

const RFM_NO_SEGMENT = "No segment yet";

function rfmPage() {
  const measure = $("#measure");
  const status = $("#rfm-status");
  let grid = null;

  const load = async () => {
    try {
      const [g, cuts] = await Promise.all([api("scoring", "/v1/rfm"), api("scoring", "/v1/rfm/cuts")]);
      grid = g;
      rfmTotals(g, cuts);
      rfmHeatmap(g, measure.value);
      rfmCuts(cuts);
      setStatus(status, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus(status, missing(err) ? "RFM is not available on this server yet." : `Could not load RFM: ${err.message}`, "bad");
    }
  };
  measure.addEventListener("change", () => grid && rfmHeatmap(grid, measure.value));

  const moves = async () => {
    const days = Number($("#moves-window").value);
    const to = new Date();
    const from = new Date(to.getTime() - days * 86400000);
    const query = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
    try {
      const answer = await api("scoring", `/v1/rfm/moves?${query}`);
      rfmMoves(answer.moves || []);
      setStatus($("#moves-status"), "");
    } catch (err) {
      setStatus($("#moves-status"), missing(err) ? "Moves between segments are not available on this server yet." : `Could not load the moves: ${err.message}`, "bad");
    }
  };
  $("#moves-window").addEventListener("change", moves);

  // A click on a cell lists its segment's customers (campaigns' customer list, by id).
  let listed = null;
  let pages = [""];
  let next = null;
  const customers = async () => {
    const q = new URLSearchParams({ rfm_segment: listed, limit: "25" });
    if (pages[pages.length - 1]) q.set("after", pages[pages.length - 1]);
    const state = $("#rfm-customers-status");
    try {
      const answer = await api("campaigns", `/v1/customers?${q}`);
      const list = answer.customers || [];
      next = answer.next;
      table(
        $("#rfm-customers-list"),
        ["Customer", "Name", "Email", "Stage", "RFM segment"],
        list.map((c) => [
          el("a", { href: `/customers?id=${encodeURIComponent(c.customer_id)}`, "data-customer": c.customer_id }, c.customer_id),
          c.name || "–",
          c.email || "–",
          stageLabel(c.stage),
          el("td", { "data-rfm": c.rfm_segment || "" }, c.rfm_segment || "–"),
        ])
      );
      setStatus(state, list.length ? `Page ${pages.length}: ${list.length} shown.` : pages.length > 1 ? "No more customers." : "Nobody in this segment right now.");
    } catch (err) {
      next = null;
      setStatus(state, missing(err) ? "Listing customers by RFM segment is not available on this server yet." : `Could not list the customers: ${err.message}`, "bad");
    }
    $("#rfm-customers-next").disabled = !next;
    $("#rfm-customers-first").disabled = pages.length === 1;
  };
  $("#heatmap").addEventListener("click", (ev) => {
    const cell = ev.target.closest("td[data-segment]");
    if (!cell) return;
    listed = cell.dataset.segment;
    pages = [""];
    $("#rfm-customers-title").textContent = `Customers in ${listed}`;
    $("#rfm-make-segment").href = `/segments/new?condition=${encodeURIComponent(`scores.rfm_segment == "${listed}"`)}&name=${encodeURIComponent(listed)}`;
    show($("#rfm-customers"), true);
    customers();
  });
  $("#rfm-customers-next").addEventListener("click", () => next && (pages.push(next), customers()));
  $("#rfm-customers-first").addEventListener("click", () => ((pages = [""]), customers()));

  load();
  moves();
  setInterval(() => (load(), moves()), 10000);
}

function rfmTotals(g, cuts) {
  $("#rfm-kpis").replaceChildren(
    kpi("Customers", fmtNumber(g.customers), "with an RFM cell, in the grid below", "customers"),
    kpi("Revenue", fmtMoney(g.revenue), "their spend, net of refunds", "revenue"),
    kpi("Not scored yet", fmtNumber(g.unscored), "scored before there were cut points; placed at the next rescore", "unscored"),
    kpi("Cut points", cuts.version === null ? "none yet" : `v${cuts.version}`, cuts.as_of ? `as of ${cuts.as_of}` : "computed once customers have bought", "cuts")
  );
}

function rfmHeatmap(g, measure) {
  const value = (c) => Number(c[measure]) || 0;
  const max = Math.max(0, ...g.cells.map(value));
  const total = g.cells.reduce((sum, c) => sum + value(c), 0);
  const at = Object.fromEntries(g.cells.map((c) => [`${c.recency}${c.frequency}`, c]));
  const label = (v) => (measure === "revenue" ? fmtMoney(v) : fmtNumber(v));
  const rows = [5, 4, 3, 2, 1].map((r) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, `R ${r}`),
      [1, 2, 3, 4, 5].map((f) => {
        const c = at[`${r}${f}`] || { segment: "", customers: 0, revenue: "0" };
        const share = max ? value(c) / max : 0;
        const cell = el(
          "td",
          {
            "data-recency": r,
            "data-frequency": f,
            "data-segment": c.segment,
            "data-value": String(c[measure]),
            class: share > 0.55 ? "dark" : "",
            title: `${c.segment}, R ${r} F ${f}: ${fmtNumber(c.customers)} customers, revenue ${fmtMoney(c.revenue)}${total ? ` (${fmtPercent(value(c) / total)} of the ${measure})` : ""}`,
          },
          el("div", { class: "hm-segment" }, c.segment),
          el("div", { class: "hm-value" }, label(value(c)))
        );
        // Intensity by value; a faint tint keeps empty cells visible as cells.
        cell.style.backgroundColor = `rgba(59, 110, 168, ${(0.06 + 0.88 * share).toFixed(3)})`;
        return cell;
      })
    )
  );
  $("#heatmap").replaceChildren(
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "R \\ F"), [1, 2, 3, 4, 5].map((f) => el("th", { scope: "col" }, `F ${f}`)))),
    el("tbody", {}, rows)
  );
  $("#heatmap").dataset.measure = measure;
}

// The groups each measure's four cut points make: quintile = 1 + cut points below the value.
function rfmRanges(cuts, fmt, unit) {
  const ranges = [];
  for (let q = 1; q <= 5; q++) {
    const low = q > 1 ? cuts[q - 2] : null;
    const high = q < 5 ? cuts[q - 1] : null;
    if (low !== null && high !== null && low >= high) ranges.push("(empty: tied values)");
    else if (low === null) ranges.push(`≤ ${fmt(high)}${unit}`);
    else if (high === null) ranges.push(`> ${fmt(low)}${unit}`);
    else ranges.push(`${fmt(low)} – ${fmt(high)}${unit}`);
  }
  return ranges;
}

function rfmCuts(cuts) {
  if (cuts.version === null || !cuts.recency) {
    table($("#cuts"), ["Measure", "Cut points"], [["–", "none yet: they are computed once customers have bought (at a refit, or daily)"]]);
    $("#cuts-about").textContent = "";
    return;
  }
  const days = (v) => fmtNumber(v, 1);
  const recency = rfmRanges(cuts.recency, days, " days").reverse(); // R 5 = fewest days
  const frequency = rfmRanges(cuts.frequency, days, " days");
  const monetary = rfmRanges(cuts.monetary, fmtMoney, "");
  table(
    $("#cuts"),
    ["Group", "Recency (days since the last purchase)", "Frequency (days with a purchase)", "Monetary (spend)"],
    [5, 4, 3, 2, 1].map((q) => [el("td", {}, el("strong", {}, String(q))), recency[q - 1], frequency[q - 1], monetary[q - 1]])
  );
  const pct = (cuts.quantiles || []).map((x) => `${Math.round(x * 100)} %`).join(", ");
  $("#cuts-about").textContent =
    `Cut points at ${pct} of ${fmtNumber(cuts.customers)} customers: recency ${cuts.recency.map(days).join(", ")} days; ` +
    `frequency ${cuts.frequency.map(days).join(", ")}; monetary ${cuts.monetary.map(fmtMoney).join(", ")}. ` +
    `Version ${cuts.version}, computed ${fmtTime(cuts.computed_at)} (${cuts.trigger}) as of ${cuts.as_of}.`;
}

function rfmMoves(list) {
  const moves = list.filter((m) => m.customers > 0).sort((a, b) => b.customers - a.customers);
  const max = moves.length ? moves[0].customers : 0;
  show($("#moves-empty"), moves.length === 0);
  $("#moves").replaceChildren(
    ...moves.map((m) => {
      const bar = el("span", { class: "move-bar" }, el("span", {}));
      bar.firstChild.style.width = `${Math.max(1, Math.round((100 * m.customers) / max))}%`;
      return el(
        "li",
        { "data-from": m.from || "", "data-to": m.to || "", "data-customers": String(m.customers) },
        el("span", { class: "move-label" }, el("span", {}, m.from || RFM_NO_SEGMENT), " → ", el("strong", {}, m.to || RFM_NO_SEGMENT)),
        bar,
        el("span", { class: "move-count" }, rfmCustomers(m.customers))
      );
    })
  );
}

function rfmCustomers(n) {
  return `${fmtNumber(n)} ${Number(n) === 1 ? "customer" : "customers"}`;
}
