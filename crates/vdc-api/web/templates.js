"use strict";
// Templates and clones on the web page: a section of its own (the
// templates with their linked clones and a delete button, a form to clone a
// powered-off VM with guest customization, a form to make a template of
// one) and each VM's "clone" / "convert_to_template" row actions, which
// pick the VM in those forms. Uses the page's `api`, `esc` and `$`.
window.templatesUi = (() => {
  function section() {
    if ($("#templatesec")) return;
    const s = document.createElement("section");
    s.id = "templatesec";
    s.className = "wide";
    s.innerHTML = `<h2>Templates and clones</h2><div id="tpl-msg" class="failed"></div>
      <table id="tpls"><thead><tr><th>Name</th><th>Datastore</th><th>Image</th><th>Size</th><th>From VM</th><th>Based on</th><th>Linked clones</th><th>Full clones</th><th></th></tr></thead><tbody></tbody></table>
      <form class="create" id="clone-form" title="clone a powered-off VM">
        <select name="vm" id="clone-vm"></select>
        <input name="name" placeholder="clone name" required>
        <input name="hostname" placeholder="hostname (default: name)">
        <input name="ip" placeholder="address A.B.C.D/N (default: pool)">
        <label><input name="dhcp" type="checkbox"> DHCP</label>
        <label><input name="start" type="checkbox"> start</label>
        <button>Clone</button>
      </form>
      <form class="create" id="totpl-form" title="make a template of a powered-off VM">
        <select name="vm" id="totpl-vm"></select>
        <input name="name" placeholder="template name (default: the VM's)">
        <label><input name="keep_vm" type="checkbox"> keep the VM (copy)</label>
        <button>Make template</button>
      </form>`;
    $("main").insertBefore(s, $("#vms").closest("section").nextSibling);
    $("#clone-form").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), body = { name: f.get("name"), dhcp: f.get("dhcp") === "on", start: f.get("start") === "on" };
      if (f.get("hostname")) body.hostname = f.get("hostname");
      if (f.get("ip")) body.ip = f.get("ip");
      if (await run(() => api("POST", "/vms/" + encodeURIComponent(f.get("vm")) + "/clone", body))) ev.target.reset();
    };
    $("#totpl-form").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), body = { keep_vm: f.get("keep_vm") === "on" };
      if (f.get("name")) body.name = f.get("name");
      if (await run(() => api("POST", "/vms/" + encodeURIComponent(f.get("vm")) + "/to-template", body))) ev.target.reset();
    };
  }
  async function run(f) {
    $("#tpl-msg").textContent = "";
    let ok = true;
    try { await f(); } catch (e) { $("#tpl-msg").textContent = e.message; ok = false; }
    setTimeout(refresh, 300);
    return ok;
  }
  function pick(sel, names) {
    const el = $(sel), cur = el.value;
    el.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(cur)) el.value = cur;
  }
  const list = (v) => v.length ? esc(v.join(", ")) : "-";
  async function refresh() {
    section();
    let tpls, vms;
    try { [tpls, vms] = await Promise.all([api("GET", "/templates"), api("GET", "/vms")]); }
    catch (e) { $("#tpl-msg").textContent = e.message; return; }
    let details;
    try { details = await Promise.all(tpls.map((t) => api("GET", "/templates/" + encodeURIComponent(t.name)))); }
    catch (e) { $("#tpl-msg").textContent = e.message; return; }
    $("#tpls tbody").innerHTML = details.map((d) => `<tr data-template="${esc(d.name)}"><td>${esc(d.name)}</td><td>${esc(d.datastore)}</td><td>${esc(d.path)}</td><td>${d.size_bytes ? (d.size_bytes / 2 ** 30).toFixed(2) + " GiB" : "being made"}</td><td>${esc(d.from_vm || "-")}</td><td>${esc(d.base || "-")}</td><td>${list(d.linked_clones.concat(d.dependent_templates))}</td><td>${list(d.full_clones)}</td><td><button data-template-delete="${esc(d.name)}" onclick="templatesUi.del('${esc(d.name)}')">delete</button></td></tr>`).join("");
    const names = vms.map((v) => v.name);
    pick("#clone-vm", names);
    pick("#totpl-vm", names);
  }
  // A VM's row action: pick it in the matching form.
  function act(vm, a) {
    const sel = a === "clone" ? "#clone-vm" : "#totpl-vm";
    $(sel).value = vm;
    $(sel).closest("form").querySelector("input").focus();
  }
  return {
    refresh,
    act,
    del: (t) => run(() => api("DELETE", "/templates/" + encodeURIComponent(t))),
    topics: ["template.deleted", "vm.cloned"],
  };
})();
