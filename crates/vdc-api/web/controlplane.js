"use strict";
// The control plane on the web page: a section of its own with the store,
// its revision, the leader and every server with its role. Uses the page's
// `api`, `esc`, `rows` and `$`.
window.controlPlane = (() => {
  function section() {
    if ($("#cp")) return;
    const s = document.createElement("section");
    s.id = "cp";
    s.innerHTML = `<h2>Control plane</h2><div id="cp-summary"></div>
      <table id="cp-members"><thead><tr><th>Server</th><th>Role</th><th>URL</th><th>Started</th></tr></thead><tbody></tbody></table>`;
    $("main").appendChild(s);
  }
  async function refresh() {
    section();
    const cp = await api("GET", "/cluster/control-plane");
    $("#cp-summary").textContent = `store ${cp.store} at revision ${cp.revision}; leader ${cp.leader ? cp.leader.id : "(electing)"}; this page is served by ${cp.served_by}`;
    rows("#cp-members", cp.members, (m) => `<tr data-server="${esc(m.id)}"><td>${esc(m.id)}</td><td class="${m.role}">${m.role}</td><td>${esc(m.url)}</td><td>${new Date(m.started_ms).toLocaleTimeString()}</td></tr>`);
  }
  return { refresh, topics: ["cluster.leader_changed"] };
})();
