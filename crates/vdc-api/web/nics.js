"use strict";
// VM NICs on the web page: a section of its own (every VM's NICs with
// their port group, MAC, address and hot-plug port, a remove button; a
// form to add a NIC, hot-plugged into a running VM) and each VM's
// "reconfigure" row action, which picks the VM in that form.
// Uses the page's `api`, `esc`, `rows` and `$`.
window.nicsUi = (() => {
  function section() {
    if ($("#nicsec")) return;
    const s = document.createElement("section");
    s.id = "nicsec";
    s.className = "wide";
    s.innerHTML = `<h2>VM NICs</h2><div id="nic-msg" class="failed"></div>
      <table id="nics"><thead><tr><th>VM</th><th>NIC</th><th>Port group</th><th>MAC</th><th>Address</th><th>Hot-plug port</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="nic-add" title="add a NIC (hot-plugged while the VM runs)">
        <select name="vm" id="nic-vm"></select>
        <select name="network" id="nic-net"></select>
        <input name="mac" placeholder="MAC (default: random)">
        <button>Add NIC</button>
      </form>`;
    $("main").appendChild(s);
    $("#nic-add").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), body = { network: f.get("network") };
      if (f.get("mac")) body.mac = f.get("mac");
      if (await run(() => api("POST", "/vms/" + encodeURIComponent(f.get("vm")) + "/nics", body))) ev.target.querySelector("input").value = "";
    };
  }
  async function run(f) {
    $("#nic-msg").textContent = "";
    let ok = true;
    try { await f(); } catch (e) { $("#nic-msg").textContent = e.message; ok = false; }
    setTimeout(refresh, 300);
    return ok;
  }
  function pick(sel, names) {
    const el = $(sel), cur = el.value;
    el.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(cur)) el.value = cur;
  }
  // The NIC's id, as the server names it: net<k> on the root complex,
  // hpnet<port> on a hot-plug port.
  function nicId(nics, i) {
    if (nics[i].port !== undefined && nics[i].port !== null) return "hpnet" + nics[i].port;
    return "net" + nics.slice(0, i).filter((n) => n.port === undefined || n.port === null).length;
  }
  async function refresh() {
    section();
    let vms, nets;
    try { [vms, nets] = await Promise.all([api("GET", "/vms"), api("GET", "/networks")]); }
    catch (e) { $("#nic-msg").textContent = e.message; return; }
    const list = vms.flatMap((v) => v.nics.map((n, i) => ({ vm: v.name, id: nicId(v.nics, i), n })));
    rows("#nics", list, (x) => `<tr data-nic="${esc(x.vm)}/${esc(x.id)}"><td>${esc(x.vm)}</td><td>${esc(x.id)}</td><td>${esc(x.n.network)}</td><td>${esc(x.n.mac)}</td><td>${esc(x.n.ip || "-")}</td><td>${x.n.port === undefined || x.n.port === null ? "-" : "hp" + x.n.port}</td><td><button data-nic-remove="${esc(x.vm)}/${esc(x.id)}" onclick="nicsUi.remove('${esc(x.vm)}','${esc(x.id)}')">remove</button></td></tr>`);
    pick("#nic-vm", vms.map((v) => v.name));
    pick("#nic-net", nets.map((n) => n.name));
  }
  // A VM's "reconfigure" row action: pick it in the form.
  function act(vm) {
    $("#nic-vm").value = vm;
    $("#nic-net").focus();
  }
  return {
    refresh,
    act,
    remove: (vm, nic) => run(() => api("DELETE", "/vms/" + encodeURIComponent(vm) + "/nics/" + encodeURIComponent(nic))),
    topics: ["vm.nic_added", "vm.nic_removed"],
  };
})();
