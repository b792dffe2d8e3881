"use strict";
// VM snapshots on the web page: a section of its own with a VM selector,
// that VM's snapshot tree (indented by parent, the current position marked
// "you are here", consistency, memory) with revert and delete buttons, and
// a form to take a snapshot, and one to instant-clone the VM. Uses the page's `api`, `esc`, `rows` and `$`.
window.snapshots = (() => {
  let vm = "";
  function section() {
    if ($("#snapshots")) return;
    const s = document.createElement("section");
    s.id = "snapshots";
    s.className = "wide";
    s.innerHTML = `<h2>Snapshots</h2><div id="snap-msg" class="failed"></div>
      <label>VM <select id="snap-vm" onchange="snapshots.pick(this.value)"></select></label> <span id="snap-chain"></span>
      <table id="snaptree"><thead><tr><th>Snapshot</th><th>Taken</th><th>Memory</th><th>Consistency</th><th>Description</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="snap-create">
        <input name="name" placeholder="snapshot name" required>
        <input name="description" placeholder="description">
        <label><input name="memory" type="checkbox"> with memory</label>
        <button>Take snapshot</button>
      </form>
      <form class="create" id="snap-clone" title="clone the running VM: instant (resumed from its memory), full or linked (booted)">
        <input name="name" placeholder="clone name" required>
        <select name="how"><option value="instant">instant (resumed)</option><option value="full">full copy (boots)</option><option value="linked">linked (boots)</option></select>
        <button>Clone running VM</button>
      </form>`;
    $("main").insertBefore(s, $("#vms").closest("section").nextSibling);
    $("#snap-create").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const body = { name: f.get("name"), description: f.get("description") || "", memory: f.get("memory") === "on" };
      await run(() => api("POST", "/vms/" + encodeURIComponent(vm) + "/snapshots", body));
      ev.target.reset();
    };
    $("#snap-clone").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const base = "/vms/" + encodeURIComponent(vm);
      const how = f.get("how") || "instant";
      await run(() => how === "instant"
        ? api("POST", base + "/instant-clone", { name: f.get("name") })
        : api("POST", base + "/clone-running", { name: f.get("name"), linked: how === "linked" }));
      ev.target.reset();
    };
  }
  async function run(f) {
    $("#snap-msg").textContent = "";
    try { await f(); } catch (e) { $("#snap-msg").textContent = e.message; }
    setTimeout(() => refresh(null), 300);
  }
  // Parents before children, children indented under their parent.
  function ordered(list) {
    const out = [];
    const walk = (parent, depth) => list.snapshots.filter((s) => (s.parent || null) === parent).forEach((s) => { out.push([s, depth]); walk(s.name, depth + 1); });
    walk(null, 0);
    return out;
  }
  async function refresh(vms) {
    section();
    if (vms) {
      const sel = $("#snap-vm");
      const names = vms.map((v) => v.name);
      if (!names.includes(vm)) vm = names[0] || "";
      sel.innerHTML = names.map((n) => `<option${n === vm ? " selected" : ""}>${esc(n)}</option>`).join("");
    }
    if (!vm) { rows("#snaptree", [], () => ""); $("#snap-chain").textContent = ""; return; }
    let list;
    try { list = await api("GET", "/vms/" + encodeURIComponent(vm) + "/snapshots"); }
    catch (e) { $("#snap-msg").textContent = e.message; return; }
    $("#snap-chain").textContent = `disk chain ${list.chain_length} of at most ${list.max_chain_length} images` + (list.warning ? " — " + list.warning : "");
    const q = encodeURIComponent(vm);
    rows("#snaptree", ordered(list), ([s, depth]) => {
      const here = list.current === s.name;
      const n = esc(s.name);
      return `<tr data-snapshot="${n}"${here ? ' class="current"' : ""}><td style="padding-left:${0.4 + depth * 1.2}em">${n}${here ? " <b>(you are here)</b>" : ""}</td><td>${new Date(s.created_ms).toLocaleString()}</td><td>${s.memory ? "yes" : "no"}</td><td title="${esc(s.quiesce_note)}">${s.consistency === "quiesced" ? "quiesced" : "crash-consistent"}</td><td>${esc(s.description)}</td><td><button data-snap-revert="${n}" onclick="snapshots.revert('${n}')">revert</button><button data-snap-delete="${n}" onclick="snapshots.del('${n}')">delete</button></td></tr>`;
    });
  }
  return {
    refresh,
    pick: (name) => { vm = name; refresh(null); },
    revert: (s) => run(() => api("POST", "/vms/" + encodeURIComponent(vm) + "/snapshots/" + encodeURIComponent(s) + "/revert", {})),
    del: (s) => run(() => api("DELETE", "/vms/" + encodeURIComponent(vm) + "/snapshots/" + encodeURIComponent(s))),
    topics: ["snapshot.created", "snapshot.reverted", "snapshot.deleted", "snapshot.chain_warning", "vm.instant_cloned", "vm.cloned"],
  };
})();
