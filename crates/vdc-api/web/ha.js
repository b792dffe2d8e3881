"use strict";
// HA order groups and alarms on the web page: a section of its own (groups
// in restart order with their VMs, a form to add one, the alarms with an
// acknowledge button) and each VM's group selector. Uses the page's `api`,
// `esc` and `$`.
window.haOrder = (() => {
  let groups = [];
  function section() {
    if ($("#haorder")) return;
    const s = document.createElement("section");
    s.id = "haorder";
    s.innerHTML = `<h2>HA order groups and alarms</h2><div id="haorder-msg" class="failed"></div>
      <table id="hagroups"><thead><tr><th>Order</th><th>Group</th><th>Starts after</th><th>Ready timeout</th><th>VMs</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="hagroup-create">
        <input name="name" placeholder="new group name" required>
        <input name="after" placeholder="after (comma-separated groups)">
        <input name="ready_timeout_s" type="number" min="1" max="86400" placeholder="ready timeout s">
        <button>Create group</button>
      </form>
      <h2>Alarms</h2>
      <table id="alarms"><thead><tr><th>Severity</th><th>Object</th><th>Reason</th><th>Raised</th><th>Cleared</th><th></th></tr></thead><tbody></tbody></table>`;
    $("main").insertBefore(s, $("#ha").closest("section").nextSibling);
    $("#hagroup-create").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const body = { name: f.get("name"), after: String(f.get("after") || "").split(",").map((x) => x.trim()).filter((x) => x) };
      if (f.get("ready_timeout_s")) body.ready_timeout_s = Number(f.get("ready_timeout_s"));
      await run(() => api("POST", "/ha/groups", body));
      ev.target.reset();
    };
  }
  async function run(f) {
    $("#haorder-msg").textContent = "";
    try { await f(); } catch (e) { $("#haorder-msg").textContent = e.message; }
    setTimeout(refresh, 300);
  }
  const time = (ms) => ms ? new Date(ms).toLocaleTimeString() : "-";
  async function refresh() {
    section();
    let alarms;
    try { [groups, alarms] = await Promise.all([api("GET", "/ha/groups"), api("GET", "/alarms")]); }
    catch (e) { $("#haorder-msg").textContent = e.message; return; }
    rows("#hagroups", groups, (g) => `<tr data-group="${esc(g.name)}"><td>${g.rank}</td><td>${esc(g.name)}</td><td>${esc(g.after.join(", ") || "-")}</td><td>${g.ready_timeout_s} s</td><td>${esc(g.vms.join(", ") || "-")}</td><td><button data-group-delete="${esc(g.name)}" onclick="haOrder.del('${esc(g.name)}')">delete</button></td></tr>`);
    rows("#alarms", alarms.slice(0, 20), (a) => `<tr data-alarm="${esc(a.id)}" class="${a.cleared_ms ? "" : a.severity === "critical" ? "failed" : "starting"}"><td>${esc(a.severity)}</td><td>${esc(a.object)}</td><td>${esc(a.reason)}</td><td>${time(a.raised_ms)}</td><td>${a.cleared_ms ? time(a.cleared_ms) + " (" + esc(a.cleared_reason) + ")" : "raised"}</td><td>${a.acknowledged ? "acknowledged" : `<button data-ack="${esc(a.id)}" onclick="haOrder.ack('${esc(a.id)}')">acknowledge</button>`}</td></tr>`);
  }
  // A VM's order group, changed from its row.
  function groupCell(v) {
    const g = (v.ha && v.ha.group) || "";
    const opts = [""].concat(groups.map((x) => x.name)).map((n) => `<option value="${esc(n)}"${n === g ? " selected" : ""}>${n ? esc(n) : "(no group)"}</option>`).join("");
    return `<select class="ha-group" data-vm="${esc(v.name)}" onchange="haOrder.join('${esc(v.name)}', this.value)">${opts}</select>`;
  }
  return {
    refresh,
    groupCell,
    join: (vm, g) => run(() => api("PATCH", "/vms/" + encodeURIComponent(vm), { ha_group: g || null })),
    del: (g) => run(() => api("DELETE", "/ha/groups/" + encodeURIComponent(g))),
    ack: (id) => run(() => api("POST", "/alarms/" + encodeURIComponent(id) + "/ack", {})),
    topics: ["ha.restart_waiting", "ha.restart_deferred", "ha.restart_retry", "ha.dependency_timeout", "ha.group_created", "ha.group_changed", "ha.group_deleted", "alarm.raised", "alarm.cleared", "alarm.acknowledged"],
  };
})();
