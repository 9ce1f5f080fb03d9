"use strict";
let token = sessionStorage.getItem("securetrain-token");
let me = null;
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  const response = await fetch("/api/v1" + path, Object.assign({}, options, { headers }));
  if (response.status === 401 && path !== "/auth/login") { logout(); throw new Error("Please log in again."); }
  if (!response.ok) {
    let detail = response.statusText;
    try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) {}
    throw new Error(detail);
  }
  return response;
}

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function button(label, id, action) {
  const b = document.createElement("button"); b.textContent = label; b.id = id;
  b.addEventListener("click", () => action().catch((e) => { $("message").textContent = e.message; }));
  return b;
}

function gauge(budget) {
  const span = document.createElement("div"); span.className = "gauge";
  const used = budget.epsilon_budget ? (budget.reserved / budget.epsilon_budget) : 0;
  if (used > 0.8) span.className += " high";
  const fill = document.createElement("span"); fill.style.width = Math.min(100, 100 * used).toFixed(1) + "%";
  span.appendChild(fill); span.title = (100 * used).toFixed(1) + "% of the budget";
  return span;
}

async function loadDatasets() {
  const list = await (await api("/datasets")).json();
  const body = $("datasets"); body.innerHTML = "";
  const select = $("submit-dataset"); select.innerHTML = "";
  for (const d of list) {
    const tr = document.createElement("tr"); tr.id = "dataset-" + d.id;
    tr.appendChild(cell(d.name)); tr.appendChild(cell(d.owner));
    const g = document.createElement("td"); g.appendChild(gauge(d.budget)); tr.appendChild(g);
    const b = d.budget;
    tr.appendChild(cell(b.epsilon_budget === null ? "no spending yet" : b.reserved.toFixed(3) + " / " + b.epsilon_budget.toFixed(3)));
    tr.appendChild(cell(d.require_approval ? "owner approves" : "automatic within budget"));
    body.appendChild(tr);
    const option = document.createElement("option"); option.value = d.id; option.textContent = d.name; select.appendChild(option);
  }
}

async function showCard(job) {
  $("result-section").classList.remove("hidden");
  $("result-title").textContent = "Model card of job " + job.id.slice(0, 8);
  const card = await (await api("/jobs/" + job.id + "/card")).json();
  $("result-card").textContent = JSON.stringify({ privacy: card.privacy, metrics: card.metrics, data: card.data }, null, 2);
  const v = await (await api("/jobs/" + job.id + "/verify")).json();
  $("result-verify").innerHTML = "";
  const s = document.createElement("span"); s.className = v.verified ? "ok" : "bad"; s.id = "verify-status";
  s.textContent = v.verified ? "signature verified, ε = " + v.epsilon.toFixed(4) : "NOT verified";
  $("result-verify").appendChild(s);
  $("result-report").classList.add("hidden");
}

async function showReport(job) {
  $("result-section").classList.remove("hidden");
  $("result-title").textContent = "Audit of job " + job.id.slice(0, 8);
  const doc = await (await api("/jobs/" + job.id + "/audit")).json();
  $("result-card").textContent = JSON.stringify(doc.summary || doc, null, 2).slice(0, 4000);
  $("result-verify").textContent = "";
  $("result-report").classList.remove("hidden");
  $("result-report").srcdoc = await (await api("/jobs/" + job.id + "/report")).text();
}

async function download(job) {
  const blob = await (await api("/jobs/" + job.id + "/bundle")).blob();
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob);
  a.download = "securetrain-" + job.id + ".zip"; a.id = "download-link";
  document.body.appendChild(a); a.click(); a.remove();
}

async function loadJobs() {
  const list = await (await api("/jobs")).json();
  const body = $("jobs"); body.innerHTML = "";
  for (const j of list) {
    const tr = document.createElement("tr"); tr.id = "job-" + j.id;
    tr.appendChild(cell(j.id.slice(0, 8))); tr.appendChild(cell(j.kind)); tr.appendChild(cell(j.dataset_id.slice(0, 8)));
    tr.appendChild(cell(j.submitter)); tr.appendChild(cell(j.epsilon ? j.epsilon.toFixed(2) : "-"));
    const state = cell(j.state + (j.error ? ": " + j.error.split("\n")[0] : "")); state.className = "job-state"; tr.appendChild(state);
    const p = document.createElement("td"); const bar = document.createElement("progress"); bar.max = 1; bar.value = j.progress; p.appendChild(bar); tr.appendChild(p);
    const actions = document.createElement("td");
    if (j.state === "awaiting_approval" && me.role === "owner") {
      actions.appendChild(button("Approve", "approve-" + j.id, async () => { await api("/jobs/" + j.id + "/approve", { method: "POST" }); refresh(); }));
      actions.appendChild(button("Reject", "reject-" + j.id, async () => { await api("/jobs/" + j.id + "/reject", { method: "POST" }); refresh(); }));
    }
    if (["awaiting_approval", "queued", "running"].includes(j.state) && (me.role !== "auditor" || j.submitter === me.name)) {
      actions.appendChild(button("Cancel", "cancel-" + j.id, async () => { await api("/jobs/" + j.id + "/cancel", { method: "POST" }); refresh(); }));
    }
    if (j.state === "succeeded" && j.kind === "train") {
      actions.appendChild(button("Card", "card-" + j.id, () => showCard(j)));
      if (me.role !== "auditor") actions.appendChild(button("Download", "download-" + j.id, () => download(j)));
      if (["owner", "auditor"].includes(me.role)) actions.appendChild(button("Audit", "audit-" + j.id, async () => {
        await api("/jobs", { method: "POST", body: { dataset_id: j.dataset_id, kind: "audit", train_job: j.id } }); refresh();
      }));
    }
    if (j.state === "succeeded" && j.kind === "audit") actions.appendChild(button("Report", "report-" + j.id, () => showReport(j)));
    tr.appendChild(actions);
    body.appendChild(tr);
  }
}

async function loadAuditLog() {
  const verdict = await (await api("/audit-log/verify")).json();
  $("log-status").textContent = verdict.verified ? "(chain verified: " + verdict.entries + " entries)" : "(BROKEN: " + verdict.problem + ")";
  $("log-status").className = verdict.verified ? "ok" : "bad";
  const list = await (await api("/audit-log")).json();
  const body = $("audit-log"); body.innerHTML = "";
  for (const e of list.slice(-100).reverse()) {
    const tr = document.createElement("tr");
    for (const v of [e.seq, e.timestamp.slice(0, 19), e.actor, e.action, e.object]) tr.appendChild(cell(String(v)));
    body.appendChild(tr);
  }
}

async function refresh() {
  $("message").textContent = "";
  try {
    if (["owner", "analyst", "auditor"].includes(me.role)) { await loadDatasets(); await loadJobs(); }
    if (["auditor", "admin"].includes(me.role)) await loadAuditLog();
  } catch (e) { $("message").textContent = e.message; }
}

async function start() {
  if (!token) return;
  try { me = await (await api("/me")).json(); } catch (e) { return; }
  $("who").textContent = me.name + " (" + me.role + ")";
  $("login-section").classList.add("hidden"); $("app").classList.remove("hidden");
  $("submit-section").classList.toggle("hidden", me.role !== "analyst");
  $("log-section").classList.toggle("hidden", !["auditor", "admin"].includes(me.role));
  $("datasets-section").classList.toggle("hidden", me.role === "admin");
  $("jobs-section").classList.toggle("hidden", me.role === "admin");
  await refresh();
}

function logout() {
  token = null; me = null; sessionStorage.removeItem("securetrain-token");
  $("app").classList.add("hidden"); $("login-section").classList.remove("hidden"); $("who").textContent = "";
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault(); $("login-error").textContent = "";
  try {
    const r = await api("/auth/login", { method: "POST", body: { name: $("login-name").value, password: $("login-password").value } });
    token = (await r.json()).token; sessionStorage.setItem("securetrain-token", token); await start();
  } catch (e) { $("login-error").textContent = e.message; }
});

$("logout-button").addEventListener("click", async () => { try { await api("/auth/logout", { method: "POST" }); } catch (e) {} logout(); });

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { dataset_id: $("submit-dataset").value, kind: "train", epsilon: parseFloat($("submit-epsilon").value), model: $("submit-model").value };
  if ($("submit-epochs").value) body.epochs = parseInt($("submit-epochs").value, 10);
  try { await api("/jobs", { method: "POST", body }); await refresh(); } catch (e) { $("message").textContent = e.message; }
});

setInterval(() => { if (me) refresh(); }, 2000);
start();
