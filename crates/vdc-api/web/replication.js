"use strict";
// Sites and replication on the web page: the paired sites with their
// links, this site's replications (state, lag, achieved RPO, points, bytes
// sent) with sync and disable actions and a form to enable one, and the
// replicas kept here (points, pins) with a form to recover one (test or
// failover, with a network map). Uses the page's `api`, `esc`, `rows`, `$`.
window.replicationUi = (() => {
  const secs = (ms) => ms === undefined || ms === null ? "-" : (ms / 1000).toFixed(1) + " s";
  const mib = (b) => (b / 2 ** 20).toFixed(1) + " MiB";
  function section() {
    if ($("#replication-section")) return;
    const s = document.createElement("section");
    s.id = "replication-section";
    s.className = "wide";
    s.innerHTML = `<h2>Sites and replication <span id="site-local"></span></h2><div id="repl-msg" class="failed"></div>
      <table id="sites"><thead><tr><th>Site</th><th>URL</th><th>Reachable</th><th>RTT</th></tr></thead><tbody></tbody></table>
      <form class="create" id="repl-enable">
        <select name="vm" id="repl-vm"></select>
        <select name="site" id="repl-site"></select>
        <input name="rpo" id="repl-rpo" type="number" min="1" value="30" title="RPO target, seconds">
        <button>Replicate</button>
      </form>
      <table id="replications"><thead><tr><th>VM</th><th>Site</th><th>State</th><th>RPO</th><th>Lag</th><th>Achieved RPO</th><th>Points</th><th>Sent</th><th>Actions</th></tr></thead><tbody></tbody></table>
      <form class="create" id="repl-recover">
        <select name="replica" id="recover-replica"></select>
        <select name="mode" id="recover-mode"><option>test</option><option>failover</option></select>
        <input name="name" id="recover-name" placeholder="VM name (default: the VM's)">
        <input name="map" id="recover-map" placeholder="network map, e.g. lab=lab">
        <button>Recover</button>
      </form>
      <table id="replicas"><thead><tr><th>Replica</th><th>From site</th><th>State</th><th>Points</th><th>Latest</th><th>Pinned by</th></tr></thead><tbody></tbody></table>`;
    $("main").insertBefore(s, $("#tasks").closest("section"));
    $("#repl-enable").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      await run(() => api("POST", "/replications", { vm: f.get("vm"), site: f.get("site"), rpo_s: Number(f.get("rpo")) }));
    };
    $("#repl-recover").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), body = { mode: f.get("mode"), network_map: {} };
      const name = String(f.get("name") || "").trim();
      if (name) body.name = name;
      for (const pair of String(f.get("map") || "").split(",").map((x) => x.trim()).filter(Boolean)) {
        const [from, to] = pair.split("=");
        body.network_map[from] = to;
      }
      await run(() => api("POST", "/replicas/" + encodeURIComponent(f.get("replica")) + "/recover", body));
    };
  }
  async function run(f) {
    $("#repl-msg").textContent = "";
    try { await f(); } catch (e) { $("#repl-msg").textContent = e.message; }
    setTimeout(() => refresh(lastVms), 300);
  }
  let lastVms = [];
  function fillSel(sel, names) {
    const el = $(sel), cur = el.value;
    el.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(cur)) el.value = cur;
  }
  async function refresh(vms) {
    section();
    lastVms = vms;
    let local, sites, repls, replicas;
    try {
      [local, sites, repls, replicas] = await Promise.all([api("GET", "/sites/local"), api("GET", "/sites"), api("GET", "/replications"), api("GET", "/replicas")]);
    } catch (e) { $("#repl-msg").textContent = e.message; return; }
    $("#site-local").textContent = "(this site: " + local.name + ")";
    fillSel("#repl-vm", vms.map((v) => v.name));
    fillSel("#repl-site", sites.map((s) => s.name));
    fillSel("#recover-replica", replicas.map((r) => r.vm));
    rows("#sites", sites, (s) => `<tr data-site="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.url)}</td><td class="${s.reachable ? "running" : "failed"}">${s.reachable ? "yes" : "no"}</td><td>${s.rtt_ms === undefined ? "-" : s.rtt_ms + " ms"}</td></tr>`);
    rows("#replications", repls, (r) => `<tr data-replication="${esc(r.vm)}"><td>${esc(r.vm)}</td><td>${esc(r.site)}</td><td class="${r.state === "ok" ? "running" : r.state === "initial_sync" ? "starting" : "failed"}" title="${esc(r.error)}">${esc(r.state)}</td><td>${r.rpo_s} s</td><td>${secs(r.lag_ms)}</td><td>${secs(r.achieved_rpo_ms)}</td><td>${r.points}</td><td>${mib(r.bytes_sent)}</td><td><button data-sync="${esc(r.vm)}" onclick="replicationUi.sync('${esc(r.vm)}')">sync</button><button data-disable="${esc(r.vm)}" onclick="replicationUi.disable('${esc(r.vm)}')">disable</button></td></tr>`);
    rows("#replicas", replicas, (r) => `<tr data-replica="${esc(r.vm)}"><td>${esc(r.vm)}</td><td>${esc(r.source_site)}</td><td>${esc(r.state)}</td><td>${r.points.map((p) => p.id + " (" + p.consistency + ")").join(", ")}</td><td>${r.latest_point_ms ? new Date(r.latest_point_ms).toLocaleTimeString() : "-"}</td><td>${esc(r.pins.map((p) => p.vm + "@" + p.point).join(", "))}</td></tr>`);
  }
  return {
    refresh,
    sync: (vm) => run(() => api("POST", "/replications/" + encodeURIComponent(vm) + "/sync", { quiesce: false })),
    disable: (vm) => run(() => api("DELETE", "/replications/" + encodeURIComponent(vm))),
    topics: ["site.paired", "site.unpaired", "site.reachable", "site.unreachable", "replication.enabled", "replication.point", "replication.rpo_violated", "replication.rpo_restored", "replication.link_down", "replication.link_up", "replication.full_resync", "replication.disabled", "replica.point", "replica.recovered"],
  };
})();
