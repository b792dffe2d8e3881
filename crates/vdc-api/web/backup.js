"use strict";
// Backups on the web page: a section of its own with the stores, a form to
// back a VM up into a store, and the backups (newest first) with their
// consistency, counts and state, each with a verify action, and a form to
// restore one as a new VM on a chosen host (instantly: started from the
// backup while its disks are copied), or over the original VM when it is
// powered off, and a form to sync one store into another (off-site
// copy), which shows what the sync sent. Uses the page's `api`, `esc`, `rows` and `$`.
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
      <form class="create" id="backup-restore" title="restore a backup as a new VM, or over the original VM (powered off) when no name is given">
        <select name="backup" id="restore-backup"></select>
        <input name="name" id="restore-name" placeholder="new VM name (empty: over the original)">
        <select name="host" id="restore-host"><option value="">(any host)</option></select>
        <label title="start the new VM at once from the backup; its disks are copied while it runs"><input type="checkbox" name="instant" id="restore-instant"> instant</label>
        <button>Restore</button>
      </form>
      <form class="create" id="backup-sync" title="copy the backups the second store lacks into it (off-site copy)">
        <select name="from" id="sync-from"></select> →
        <select name="to" id="sync-to"></select>
        <input name="vm" id="sync-vm" placeholder="VM (empty: every backup)">
        <button>Sync</button> <span id="sync-result"></span>
      </form>
      <table id="backups"><thead><tr><th>Backup</th><th>VM</th><th>Store</th><th>Time</th><th>Consistency</th><th>Size</th><th>Read</th><th>New</th><th>Reused</th><th>State</th><th>Actions</th></tr></thead><tbody></tbody></table>
      <table id="backup-stores"><thead><tr><th>Store</th><th>Path</th><th>Encrypted</th></tr></thead><tbody></tbody></table>`;
    $("main").insertBefore(s, $("#tasks").closest("section"));
    $("#backup-restore").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const id = f.get("backup"), name = String(f.get("name") || "").trim();
      const b = lastBackups.find((x) => x.id === id);
      const body = { store: b ? b.store : undefined };
      if (name) body.name = name;
      if (name && f.get("host")) body.host = f.get("host");
      if (f.get("instant")) {
        if (!name) { $("#backup-msg").textContent = "an instant restore starts a new VM: give its name"; return; }
        body.instant = true;
      }
      await run(() => api("POST", "/backups/" + encodeURIComponent(id) + "/restore", body));
      ev.target.reset();
    };
    $("#backup-sync").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), vm = String(f.get("vm") || "").trim();
      const body = { to: f.get("to") };
      if (vm) body.vm = vm;
      $("#sync-result").textContent = "";
      await run(async () => {
        const r = await api("POST", "/backup-stores/" + encodeURIComponent(f.get("from")) + "/sync", body);
        $("#sync-result").textContent = `${r.backups_copied.length} backup(s) copied, ${r.chunks_sent} chunk(s) sent, ${r.chunks_present} already there`;
      });
    };
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
  let lastVms = [], lastHosts = [], lastBackups = [];
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
    fillSel("#sync-from", stores.map((s) => s.name));
    fillSel("#sync-to", stores.map((s) => s.name));
    lastBackups = backups;
    fillSel("#restore-backup", backups.slice().reverse().map((b) => b.id));
    const hsel = $("#restore-host"), hcur = hsel.value;
    hsel.innerHTML = `<option value="">(any host)</option>` + hosts.map((h) => `<option>${esc(h.name)}</option>`).join("");
    hsel.value = hcur;
    rows("#backup-stores", stores, (s) => `<tr><td>${esc(s.name)}</td><td>${esc(s.path)}</td><td>${s.encryption_key ? "yes" : "no"}</td></tr>`);
    rows("#backups", backups.slice().reverse(), (b) => `<tr data-backup="${esc(b.id)}"><td>${esc(b.id)}</td><td>${esc(b.vm)}</td><td>${esc(b.store)}</td><td>${new Date(b.started_ms).toLocaleString()}</td><td>${esc(b.consistency)}</td><td>${(b.size_bytes / 2 ** 20).toFixed(0)} MiB</td><td>${sum(b, "chunks_read")}</td><td>${sum(b, "chunks_new")}</td><td>${sum(b, "chunks_reused")}</td><td class="${b.damaged ? "failed" : "running"}">${b.damaged ? "damaged" : "ok"}</td><td><button data-verify="${esc(b.id)}" onclick="backupUi.verify('${esc(b.id)}','${esc(b.store)}')">verify</button></td></tr>`);
  }
  return {
    refresh,
    verify: (id, store) => run(async () => {
      const r = await api("POST", "/backups/" + encodeURIComponent(id) + "/verify?store=" + encodeURIComponent(store), {});
      if (r.damaged) throw new Error(`backup ${id} is damaged: ${r.damaged_chunks.length} chunk(s) missing or failing their digest`);
    }),
    topics: ["backup.started", "backup.completed", "backup.failed", "backup.restored", "backup.restore_failed", "backup.instant_restore_started", "backup.instant_restore_finished", "backup.instant_restore_failed", "backup.verified", "backup.damaged", "backup.removed", "backup.gc", "backup.store_added", "backup.store_removed", "backup.synced"],
  };
})();
