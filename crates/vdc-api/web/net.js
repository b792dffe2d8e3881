"use strict";
// Switches and port groups on the web page: a section of its own (each
// switch with its port groups and every host's realization, a form to add
// one; each port group with its VLAN, bridge, shaping both ways and
// security policy, a form to add one; delete buttons).
// Uses the page's `api`, `esc`, `rows` and `$`.
window.netView = (() => {
  function section() {
    if ($("#net")) return;
    const s = document.createElement("section");
    s.id = "net";
    s.className = "wide";
    s.innerHTML = `<h2>Switches and port groups</h2><div id="net-msg" class="failed"></div>
      <table id="switches"><thead><tr><th>Switch</th><th>Bridge</th><th>Kind</th><th>Uplinks</th><th>Port groups</th><th>Hosts</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="switch-create">
        <input name="name" placeholder="new switch name" required>
        <input name="uplinks" placeholder="uplinks (comma-separated; none: isolated)">
        <button>Create switch</button>
      </form>
      <table id="portgroups"><thead><tr><th>Port group</th><th>Switch</th><th>VLAN</th><th>Bridge</th><th>Shaping</th><th>Outbound</th><th>Forged transmits</th><th>Subnet</th><th>Pool</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="portgroup-create">
        <input name="name" placeholder="new port group name" required>
        <input name="switch" placeholder="switch" required>
        <input name="vlan" type="number" min="1" max="4094" placeholder="VLAN">
        <input name="average_kbit" type="number" min="8" placeholder="shaping kbit/s">
        <input name="burst_kib" type="number" min="2" placeholder="burst KiB">
        <input name="out_kbit" type="number" min="8" placeholder="outbound kbit/s">
        <input name="out_burst_kib" type="number" min="2" placeholder="outbound burst KiB">
        <label><input name="reject_forged" type="checkbox"> reject forged MACs</label>
        <input name="subnet" placeholder="subnet CIDR" required>
        <input name="pool" placeholder="pool START-END" required>
        <button>Create port group</button>
      </form>`;
    $("main").appendChild(s);
    $("#switch-create").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const uplinks = String(f.get("uplinks") || "").split(",").map((x) => x.trim()).filter((x) => x);
      await run(() => api("POST", "/switches", { name: f.get("name"), uplinks }));
      ev.target.reset();
    };
    $("#portgroup-create").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const [pool_start, pool_end] = String(f.get("pool")).split("-").map((x) => x.trim());
      const body = { name: f.get("name"), switch: f.get("switch"), subnet: f.get("subnet"), pool_start, pool_end: pool_end || "" };
      if (f.get("vlan")) body.vlan = Number(f.get("vlan"));
      if (f.get("average_kbit")) body.shaping = { average_kbit: Number(f.get("average_kbit")), burst_kib: Number(f.get("burst_kib") || 64) };
      if (f.get("out_kbit")) body.outbound_shaping = { average_kbit: Number(f.get("out_kbit")), burst_kib: Number(f.get("out_burst_kib") || 64) };
      if (f.get("reject_forged") === "on") body.security = { forged_transmits: false };
      await run(() => api("POST", "/networks", body));
      ev.target.reset();
    };
  }
  async function run(f) {
    $("#net-msg").textContent = "";
    try { await f(); } catch (e) { $("#net-msg").textContent = e.message; }
    setTimeout(refresh, 300);
  }
  const uplinks = (st) => (st.uplinks || []).map((u) => `${esc(u.name)} ${!u.present ? "missing" : u.up ? "up" : "down"}`).join(", ");
  const hostCell = (h) => `<span class="${h.state === "present" ? "connected" : "failed"}" data-host-state="${esc(h.host)}" title="${esc(h.detail || "")}">${esc(h.host)}: ${esc(h.state)}${h.uplinks && h.uplinks.length ? " (" + uplinks(h) + ")" : ""}</span>`;
  async function refresh() {
    section();
    let sws, nets;
    try { [sws, nets] = await Promise.all([api("GET", "/switches"), api("GET", "/networks")]); }
    catch (e) { $("#net-msg").textContent = e.message; return; }
    rows("#switches", sws, (s) => `<tr data-switch="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.bridge)}</td><td>${esc(s.kind)}</td><td>${esc((s.uplinks || []).join(", ") || "- (isolated)")}</td><td>${esc(s.port_groups.join(", ") || "-")}</td><td>${s.hosts.map(hostCell).join("<br>")}</td><td><button data-switch-delete="${esc(s.name)}" onclick="netView.delSwitch('${esc(s.name)}')">delete</button></td></tr>`);
    rows("#portgroups", nets, (n) => `<tr data-portgroup="${esc(n.name)}"><td>${esc(n.name)}</td><td>${esc(n.switch || n.bridge)}</td><td>${n.vlan || "-"}</td><td>${esc(n.bridge)}</td><td>${n.shaping ? n.shaping.average_kbit + " kbit/s, burst " + n.shaping.burst_kib + " KiB" : "-"}</td><td>${n.outbound_shaping ? n.outbound_shaping.average_kbit + " kbit/s, burst " + n.outbound_shaping.burst_kib + " KiB" : "-"}</td><td data-forged="${esc(n.name)}">${n.security && !n.security.forged_transmits ? "reject" : "accept"}</td><td>${esc(n.subnet)}</td><td>${esc(n.pool_start)}-${esc(n.pool_end)}</td><td><button data-portgroup-delete="${esc(n.name)}" onclick="netView.delPortGroup('${esc(n.name)}')">delete</button></td></tr>`);
  }
  return {
    refresh,
    delSwitch: (n) => run(() => api("DELETE", "/switches/" + encodeURIComponent(n))),
    delPortGroup: (n) => run(() => api("DELETE", "/networks/" + encodeURIComponent(n))),
    topics: ["switch.created", "switch.deleted", "switch.host_state", "network.created", "network.deleted"],
  };
})();
