"use strict";
// Recovery plans and DR runs on the web page: each plan with its sites,
// groups, state and action buttons (test, cleanup, migrate, failover,
// reprotect, failback); each run with its step timeline, RTO and RPOs, a
// continue button while it waits at a prompt, and its readable report.
// Uses the page's `api`, `esc`, `rows` and `$`.
window.drView = (() => {
  const OPS = ["test", "cleanup", "migrate", "failover", "reprotect", "failback"];
  let shown = null;
  function section() {
    if ($("#dr")) return;
    const s = document.createElement("section");
    s.id = "dr";
    s.className = "wide";
    s.innerHTML = `<h2>Recovery plans</h2><div id="dr-msg" class="failed"></div>
      <table id="plans"><thead><tr><th>Plan</th><th>Protects</th><th>Recovers to</th><th>Groups</th><th>State</th><th>Last run</th><th>Actions</th></tr></thead><tbody></tbody></table>
      <table id="dr-runs"><thead><tr><th>Run</th><th>Plan</th><th>Operation</th><th>State</th><th>Started</th><th>RTO</th><th>RPO per VM</th><th></th></tr></thead><tbody></tbody></table>
      <div id="dr-run"></div>`;
    $("main").appendChild(s);
  }
  async function run(f) {
    $("#dr-msg").textContent = "";
    try { await f(); } catch (e) { $("#dr-msg").textContent = e.message; }
    setTimeout(refresh, 300);
  }
  const secs = (ms) => ms === undefined || ms === null ? "-" : (ms / 1000).toFixed(1) + " s";
  const rpos = (r) => (r.vms || []).map((v) => `${esc(v.vm)}: ${secs(v.rpo_ms)}`).join(", ") || "-";
  const groups = (p) => p.groups.map((g, i) => `${i + 1}: ${g.vms.map((v) => esc(v.name)).join(", ")}`).join("<br>");
  const actions = (p) => OPS.map((o) => `<button data-plan-op="${esc(p.name)}:${o}" onclick="drView.op('${esc(p.name)}','${o}')">${o}</button>`).join(" ");
  function timeline(r) {
    const rowsHtml = r.steps.map((s, i) => `<tr data-step="${i}" class="${s.outcome === "failed" ? "failed" : ""}"><td>${i + 1}</td><td>${esc(s.name)}</td><td data-outcome>${esc(s.outcome)}</td><td>${s.started_ms ? "+" + secs(s.started_ms - r.started_ms) : ""}</td><td>${s.started_ms && s.finished_ms ? secs(s.finished_ms - s.started_ms) : ""}</td><td>${esc(s.detail || "")}</td></tr>`).join("");
    const vms = (r.vms || []).map((v) => `<tr data-run-vm="${esc(v.vm)}"><td>${v.group}</td><td>${esc(v.vm)}</td><td>${esc(v.recovered_as)}</td><td>${esc(v.point || "-")}</td><td data-rpo>${secs(v.rpo_ms)}</td><td>${v.ready_ms ? "+" + secs(v.ready_ms - r.started_ms) : "-"}</td></tr>`).join("");
    const wait = r.state === "waiting" ? `<p>Waiting: ${esc(r.prompt || "")} <button id="dr-continue" onclick="drView.cont('${esc(r.id)}')">continue</button></p>` : "";
    return `<h3>Run ${esc(r.id)}: ${esc(r.operation)} of ${esc(r.plan)} (${esc(r.protected_site)} → ${esc(r.recovery_site)}) — <span id="dr-run-state">${esc(r.state)}</span>, RTO <span id="dr-rto">${secs(r.rto_ms)}</span></h3>${wait}
      <table id="dr-steps"><thead><tr><th>#</th><th>Step</th><th>Outcome</th><th>At</th><th>Took</th><th>Detail</th></tr></thead><tbody>${rowsHtml}</tbody></table>
      <table id="dr-vms"><thead><tr><th>Group</th><th>VM</th><th>Recovered as</th><th>Point</th><th>RPO</th><th>Ready</th></tr></thead><tbody>${vms}</tbody></table>
      ${(r.errors || []).map((e) => `<p class="failed">${esc(e)}</p>`).join("")}
      <p><a href="#" onclick="drView.report('${esc(r.id)}');return false">readable report</a></p><pre id="dr-report"></pre>`;
  }
  async function refresh() {
    section();
    let plans, runs;
    try { [plans, runs] = await Promise.all([api("GET", "/plans"), api("GET", "/dr-runs")]); }
    catch (e) { $("#dr-msg").textContent = e.message; return; }
    rows("#plans", plans, (p) => `<tr data-plan="${esc(p.name)}"><td>${esc(p.name)}</td><td>${esc(p.protected_site)}</td><td>${esc(p.recovery_site)}</td><td>${groups(p)}</td><td data-plan-state>${esc(p.state)}</td><td>${p.last_run ? `<a href="#" onclick="drView.show('${esc(p.last_run)}');return false">${esc(p.last_run.slice(0, 8))}</a>` : "-"}</td><td>${actions(p)} <button onclick="drView.del('${esc(p.name)}')">delete</button></td></tr>`);
    rows("#dr-runs", runs.slice(0, 20), (r) => `<tr data-run="${esc(r.id)}"><td><a href="#" onclick="drView.show('${esc(r.id)}');return false">${esc(r.id.slice(0, 8))}</a></td><td>${esc(r.plan)}</td><td>${esc(r.operation)}</td><td data-run-state>${esc(r.state)}</td><td>${new Date(r.started_ms).toLocaleTimeString()}</td><td>${secs(r.rto_ms)}</td><td>${rpos(r)}</td><td><button data-run-show="${esc(r.id)}" onclick="drView.show('${esc(r.id)}')">steps</button></td></tr>`);
    if (shown) {
      const r = runs.find((x) => x.id === shown);
      if (r) $("#dr-run").innerHTML = timeline(r);
    }
  }
  async function report(id) {
    const t = await fetch("/api/v1/dr-runs/" + encodeURIComponent(id) + "/report", { headers: { Authorization: "Bearer " + token } });
    $("#dr-report").textContent = await t.text();
  }
  return {
    refresh,
    report,
    op: (p, o) => run(async () => { const r = await api("POST", `/plans/${encodeURIComponent(p)}/${o}`); shown = r.id; }),
    del: (p) => run(() => api("DELETE", "/plans/" + encodeURIComponent(p))),
    cont: (id) => run(() => api("POST", `/dr-runs/${encodeURIComponent(id)}/continue`)),
    show: (id) => { shown = id; refresh(); },
    topics: ["dr.plan_created", "dr.plan_deleted", "dr.run_started", "dr.step", "dr.prompt", "dr.run_finished", "dr.cleanup"],
  };
})();
