// CLM console: the customer page's privacy controls. Export downloads everything CLM
// holds about the customer (ingest assembles every service's answer into one document);
// erase asks first, in a dialog that names the customer and wants their id typed, then
// follows the request service by service until each has erased its part.
// Uses the helpers of console.js (el, $, api, ...), which runs before any of this is called.
"use strict";

const SERVICE_LABELS = { ingest: "Ingest", "stage-engine": "Stage engine", scoring: "Scoring", campaigns: "Campaigns" };

// `stopRefresh` stops the page reloading the customer, who is about to disappear.
function privacyPanel({ stopRefresh }) {
  const status = $("#privacy-status");
  const dialog = $("#erase-dialog");
  const typed = $("#erase-typed");
  const confirm = $("#erase-confirm");
  const error = $("#erase-error");
  let who = null; // {id, name, email} of the customer shown

  $("#export").addEventListener("click", async (ev) => {
    const id = who.id;
    ev.target.disabled = true;
    setStatus(status, "exporting…");
    try {
      const doc = await api("ingest", `/v1/privacy/exports/${encodeURIComponent(id)}`);
      download(`clm-export-${id}.json`, JSON.stringify(doc, null, 2));
      setStatus(status, `Exported everything CLM holds about ${id} as clm-export-${id}.json.`, "good");
    } catch (err) {
      setStatus(status, missing(err) ? "Export is not available on this server yet." : `Export failed: ${err.message}`, "bad");
    } finally {
      ev.target.disabled = false;
    }
  });

  $("#erase").addEventListener("click", () => {
    const known = [who.name, who.email].filter(Boolean).join(", ");
    $("#erase-who").textContent = known ? `${who.id} (${known})` : who.id;
    $("#erase-id").textContent = who.id;
    typed.value = "";
    confirm.disabled = true;
    setStatus(error, "");
    dialog.showModal();
  });
  typed.addEventListener("input", () => (confirm.disabled = typed.value.trim() !== who.id));
  $("#erase-cancel").addEventListener("click", () => dialog.close());

  $("#erase-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (typed.value.trim() !== who.id) return;
    confirm.disabled = true;
    try {
      const request = await api("ingest", "/v1/privacy/erasures", { method: "POST", body: { customer_id: who.id } });
      const id = who.id;
      dialog.close();
      stopRefresh();
      // Off the page once erased, unless another customer was opened meanwhile.
      follow(request, id, () => who.id === id && show($("#customer"), false));
    } catch (err) {
      confirm.disabled = false;
      setStatus(error, missing(err) ? "Erasure is not available on this server yet." : `Not erased: ${err.message}`, "bad");
    }
  });

  return {
    set(customer) {
      if (who && who.id !== customer.id) setStatus(status, ""); // about the one before
      who = customer;
    },
  };
}

// Shows the request, then asks ingest every second how far each service got.
async function follow(request, id, erased) {
  const state = $("#erasure-status");
  $("#erasure-title").textContent = `Erasing ${id}`;
  show($("#erasure"), true);
  $("#erasure").scrollIntoView({ block: "nearest" });
  drawErasure(request);
  state.dataset.status = request.status;
  const ids = (request.customer_ids || []).length;
  const which = ids === 1 ? "the customer's id" : `${fmtNumber(ids)} ids: the customer's and the anonymous ids linked to them`;
  const asked = `Requested by ${request.requested_by || "you"} at ${fmtTime(request.requested_at)}, for ${which}.`;
  const progress = (r) => `${asked} ${Object.values(r.services).filter(Boolean).length} of ${Object.keys(r.services).length} services done.`;
  setStatus(state, progress(request));
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    try {
      const r = await api("ingest", `/v1/privacy/erasures/${encodeURIComponent(request.request_id)}`);
      drawErasure(r);
      state.dataset.status = r.status;
      if (r.status === "completed") {
        erased();
        $("#erasure-title").textContent = `Erased ${id}`;
        setStatus(state, `Completed ${fmtTime(r.completed_at)}: CLM holds nothing more about ${id}; statistics keep anonymous counts.`, "good");
        return;
      }
      setStatus(state, progress(r));
    } catch (err) {
      if (err.status >= 400 && err.status < 500 && err.status !== 429) {
        setStatus(state, `Could not follow the erasure: ${err.message}`, "bad");
        return;
      }
      setStatus(state, `Could not check progress (${err.message}); trying again.`, "bad");
    }
  }
}

function drawErasure(r) {
  table(
    $("#erasure-services"),
    ["Service", "Progress", "Rows erased"],
    Object.entries(r.services).map(([service, done]) => {
      const rows = done ? Object.entries(done.erased || {}).filter(([, n]) => n) : [];
      return [
        el("td", { "data-service": service }, SERVICE_LABELS[service] || service),
        el("td", { "data-done": String(Boolean(done)) }, done ? `done ${fmtTime(done.completed_at)}` : "working…"),
        done ? (rows.length ? rows.map(([t, n]) => `${t} ${fmtNumber(n)}`).join(", ") : "none held") : "",
      ];
    })
  );
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
