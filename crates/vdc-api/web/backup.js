"use strict";
// Backups on the web page: a section of its own with the stores, a form to
// back a VM up into a store, and the backups (newest first) with their
// consistency, counts and state, each with verify and restore actions
// (restore as a new VM on a chosen host, or over the original VM when it
// is powered off). Uses the page's `api`, `esc`, `rows` and `$`.
window.backupUi = (() => {
  function section() {
    if ($("#backups-section")) return;
    const s = document.createElement("section");
    s.id = "backups-section";
    s.className = "wide";
    s.innerHTML = `<h2>Backups</h2><div id="backup-msg" class="failed"></div>
      <form class="create" id="backup-run">
        <select name="vm" id="backup-vm"></select>
        <select name="store" id="backup-store"></select>
        <button>Back up</button>
      </form>
      <table id="backups"><thead><tr><th>Backup</th><th>VM</th><th>Store</th><th>Time</th><th>Consistency</th><th>Size</th><th>Read</th><th>New</th><th>Reused</th><th>State</th><th>Actions</th></tr></thead><tbody></tbody></table>
      <table id="backup-stores"><thead><tr><th>Store</th><th>Path</th><th>Encrypted</th></tr></thead><tbody></tbody></table>`;
    $("main").insertBefore(s, $("#tasks").closest("section"));
    $("#backup-run").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      await run(() => api("POST", "/vms/" + encodeURIComponent(f.get("vm")) + "/backup", { store: f.get("store") }));
    };
  }
  async function run(f) {
    $("#backup-msg").textContent = "";
    try { await f(); } catch (e) { $("#backup-msg").textContent = e.message; }
    setTimeout(() => refresh(lastVms, lastHosts), 300);
  }
  let lastVms = [], lastHosts = [];
  const sum = (b, k) => b.disks.reduce((a, d) => a + d[k], 0);
  function fillSel(sel, names) {
    const el = $(sel), cur = el.value;
    el.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(cur)) el.value = cur;
  }
  async function refresh(vms, hosts) {
    section();
    lastVms = vms; lastHosts = hosts;
    let stores, backups;
    try { [stores, backups] = await Promise.all([api("GET", "/backup-stores"), api("GET", "/backups")]); }
    catch (e) { $("#backup-msg").textContent = e.message; return; }
    fillSel("#backup-vm", vms.map((v) => v.name));
    fillSel("#backup-store", stores.map((s) => s.name));
    rows("#backup-stores", stores, (s) => `<tr><td>${esc(s.name)}</td><td>${esc(s.path)}</td><td>${s.encryption_key ? "yes" : "no"}</td></tr>`);
    const hostOpts = hosts.map((h) => `<option>${esc(h.name)}</option>`).join("");
    rows("#backups", backups.slice().reverse(), (b) => `<tr data-backup="${esc(b.id)}"><td>${esc(b.id)}</td><td>${esc(b.vm)}</td><td>${esc(b.store)}</td><td>${new Date(b.started_ms).toLocaleString()}</td><td>${esc(b.consistency)}</td><td>${(b.size_bytes / 2 ** 20).toFixed(0)} MiB</td><td>${sum(b, "chunks_read")}</td><td>${sum(b, "chunks_new")}</td><td>${sum(b, "chunks_reused")}</td><td class="${b.damaged ? "failed" : "running"}">${b.damaged ? "damaged" : "ok"}</td><td>
      <button data-verify="${esc(b.id)}" onclick="backupUi.verify('${esc(b.id)}','${esc(b.store)}')">verify</button>
      <input class="restore-name" data-backup="${esc(b.id)}" placeholder="new VM name (empty: over ${esc(b.vm)})">
      <select class="restore-host" data-backup="${esc(b.id)}"><option value="">(any host)</option>${hostOpts}</select>
      <button data-restore="${esc(b.id)}" onclick="backupUi.restore('${esc(b.id)}','${esc(b.store)}')">restore</button></td></tr>`);
  }
  function restore(id, store) {
    const name = document.querySelector(`.restore-name[data-backup="${id}"]`).value.trim();
    const host = document.querySelector(`.restore-host[data-backup="${id}"]`).value;
    const body = { store };
    if (name) body.name = name;
    if (name && host) body.host = host;
    return run(() => api("POST", "/backups/" + encodeURIComponent(id) + "/restore", body));
  }
  return {
    refresh,
    restore,
    verify: (id, store) => run(async () => {
      const r = await api("POST", "/backups/" + encodeURIComponent(id) + "/verify?store=" + encodeURIComponent(store), {});
      if (r.damaged) throw new Error(`backup ${id} is damaged: ${r.damaged_chunks.length} chunk(s) missing or failing their digest`);
    }),
    topics: ["backup.started", "backup.completed", "backup.failed", "backup.restored", "backup.restore_failed", "backup.verified", "backup.damaged", "backup.removed", "backup.gc", "backup.store_added", "backup.store_removed"],
  };
})();
