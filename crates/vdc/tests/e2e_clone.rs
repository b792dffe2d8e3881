//! End-to-end: clones of powered-off VMs and templates made from VMs, on
//! real guests. One lab: a VM writes a note and is powered off; its full
//! clone boots with a customized hostname and static address and reads the
//! note; the clone becomes a template (converted, instant); five linked
//! clones of that template run at once, each answering with its own
//! hostname on its own address; the refusals along the way change nothing.

use std::time::Duration;

use serde_json::json;
use vdc_client::Client;
use vdc_test_infra::{wait_vm, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::clone::{CloneVmRequest, VmToTemplateRequest};
use vdc_types::{ErrorCode, Vm, VmAction, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_task(c: &Client, t: vdc_types::Task) {
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("task {} {} failed: {e}", t.kind, t.target);
    }
}

async fn running(c: &Client, name: &str) -> Vm {
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await
}

fn api_code(e: vdc_client::ClientError) -> (ErrorCode, String) {
    match e {
        vdc_client::ClientError::Api(a) => (a.code, a.message),
        other => panic!("not an API error: {other}"),
    }
}

/// `(hostname, answer to "read NAME")` from the guest's service at `addr`.
fn ask(lab: &TestLab, addr: &str, note: &str) -> (String, String) {
    let read = format!("read {note}");
    let lines = vdc_test_infra::wait_until(Duration::from_secs(120), "the guest's service", || {
        lab.guest_request("host-2", addr, &[&read]).ok()
    });
    let host = lines[0].split_whitespace().next().unwrap_or("").to_string();
    (host, lines.get(1).cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn clones_and_templates_from_powered_off_vms() {
    let lab = TestLab::start(2).await;
    let c = &lab.client;
    let n = lab.info.subnet_index;

    // A VM with a note on its disk.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "src".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(96),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    run_task(c, t).await;
    let src = running(c, "src").await;
    let src_ip = src.guest.address.clone().expect("address");
    let out = lab
        .guest_request("host-2", &src_ip, &["write note from-src"])
        .unwrap();
    assert_eq!(out.get(1).map(String::as_str), Some("ok"), "{out:?}");

    // A running VM is not cloned, nor made a template: 409, nothing made.
    let clone = |name: &str, host: &str, ip: String| CloneVmRequest {
        name: name.into(),
        hostname: Some(host.into()),
        ip: Some(ip),
        ..Default::default()
    };
    let (code, msg) = api_code(
        c.clone_vm(
            "src",
            &clone("copy", "copy-host", format!("10.77.{n}.50/24")),
        )
        .await
        .expect_err("running source"),
    );
    assert_eq!(code, ErrorCode::InvalidState, "{msg}");
    assert!(msg.contains("power it off"), "{msg}");
    let (code, _) = api_code(
        c.vm_to_template("src", &VmToTemplateRequest::default())
            .await
            .expect_err("running VM"),
    );
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(c.get_vm("copy").await.is_err(), "a refused clone made a VM");
    let t = c.vm_action("src", VmAction::Stop, json!({})).await.unwrap();
    run_task(c, t).await;

    // Bad input, each refused with nothing made: a name taken, an address
    // outside the network, a linked clone of a VM (not a template).
    let (code, _) = api_code(
        c.clone_vm("src", &clone("src", "x", format!("10.77.{n}.51/24")))
            .await
            .expect_err("name taken"),
    );
    assert_eq!(code, ErrorCode::AlreadyExists);
    let (code, msg) = api_code(
        c.clone_vm("src", &clone("copy", "x", "10.1.2.3/24".into()))
            .await
            .expect_err("address outside the subnet"),
    );
    assert_eq!(code, ErrorCode::InvalidInput, "{msg}");
    let (code, msg) = api_code(
        c.clone_vm(
            "src",
            &CloneVmRequest {
                linked: true,
                ..clone("copy", "x", format!("10.77.{n}.51/24"))
            },
        )
        .await
        .expect_err("linked clone of a VM"),
    );
    assert_eq!(code, ErrorCode::InvalidInput, "{msg}");
    assert!(msg.contains("template"), "{msg}");
    assert!(c.get_vm("copy").await.is_err(), "a refused clone made a VM");
    let src_now = c.get_vm("src").await.unwrap();
    assert!(src_now.operation.is_none(), "a refusal left a claim");

    // A full clone of the powered-off VM: new MAC, customized identity,
    // the source's data.
    let t = c
        .clone_vm(
            "src",
            &CloneVmRequest {
                start: true,
                ..clone("copy", "copy-host", format!("10.77.{n}.50/24"))
            },
        )
        .await
        .expect("clone accepted");
    assert_eq!(t.kind, "vm.clone");
    run_task(c, t).await;
    let copy = running(c, "copy").await;
    assert_ne!(copy.nics[0].mac, src.nics[0].mac, "a clone needs a new MAC");
    let copy_ip = format!("10.77.{n}.50");
    assert_eq!(copy.guest.address.as_deref(), Some(copy_ip.as_str()));
    assert_eq!(
        ask(&lab, &copy_ip, "note"),
        ("copy-host".to_string(), "from-src".to_string())
    );
    assert_eq!(c.get_vm("src").await.unwrap().state, VmPowerState::Stopped);

    // Convert the clone into a template (instant): the VM is gone, its disk
    // is the template's image.
    let t = c
        .vm_action("copy", VmAction::Stop, json!({}))
        .await
        .unwrap();
    run_task(c, t).await;
    let t = c
        .vm_to_template(
            "copy",
            &VmToTemplateRequest {
                name: Some("golden".into()),
                keep_vm: false,
            },
        )
        .await
        .expect("convert accepted");
    run_task(c, t).await;
    assert!(c.get_vm("copy").await.is_err(), "the converted VM remains");
    let golden = c.template("golden").await.unwrap();
    assert_eq!(golden.template.from_vm.as_deref(), Some("copy"));
    assert!(golden.template.size_bytes > 0);
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    assert!(shared.path.join("templates/golden.qcow2").is_file());
    assert!(
        !shared.path.join("copy").exists(),
        "the VM's directory remains"
    );
    // A clone to a template: the VM stays, the template is a flat copy.
    let t = c
        .vm_to_template(
            "src",
            &VmToTemplateRequest {
                name: Some("src-tpl".into()),
                keep_vm: true,
            },
        )
        .await
        .expect("copy accepted");
    run_task(c, t).await;
    assert_eq!(c.get_vm("src").await.unwrap().state, VmPowerState::Stopped);
    let copy_tpl = c.template("src-tpl").await.unwrap();
    assert_eq!(copy_tpl.template.from_vm.as_deref(), Some("src"));
    assert!(copy_tpl.template.size_bytes > 0);
    c.delete_template("src-tpl")
        .await
        .expect("unused copy deleted");
    // A template name taken.
    let (code, _) = api_code(
        c.vm_to_template(
            "src",
            &VmToTemplateRequest {
                name: Some("golden".into()),
                keep_vm: true,
            },
        )
        .await
        .expect_err("template name taken"),
    );
    assert_eq!(code, ErrorCode::AlreadyExists);

    // Five linked clones of the template run at once, each with its own
    // hostname and address, each reading the note through the template.
    let mut tasks = Vec::new();
    for i in 1..=5 {
        let t = c
            .create_vm(&CreateVmRequest {
                name: format!("lc-{i}"),
                template: Some("golden".into()),
                linked_clone: true,
                // The guest image's kernel and initramfs do not fit 64 MiB
                // (SYSLINUX loops); 80 MiB is its smallest.
                memory_mib: Some(80),
                start: true,
                hostname: Some(format!("linked-{i}")),
                ip: Some(format!("10.77.{n}.{}", 60 + i)),
                ..Default::default()
            })
            .await
            .expect("linked clone accepted");
        tasks.push(t);
    }
    for t in tasks {
        run_task(c, t).await;
    }
    for i in 1..=5 {
        let v = running(c, &format!("lc-{i}")).await;
        let ip = format!("10.77.{n}.{}", 60 + i);
        assert_eq!(v.guest.address.as_deref(), Some(ip.as_str()));
        assert_eq!(
            v.guest.hostname.as_deref(),
            Some(format!("linked-{i}").as_str())
        );
        assert_eq!(
            ask(&lab, &ip, "note"),
            (format!("linked-{i}"), "from-src".to_string())
        );
    }
    // The overlays record their backing file relative to themselves.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(shared.path.join("lc-1/disk0.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], "../templates/golden.qcow2");

    // The template is in use: its delete is refused, naming the clones.
    let d = c.template("golden").await.unwrap();
    assert_eq!(d.linked_clones.len(), 5, "{d:?}");
    let (code, msg) = api_code(c.delete_template("golden").await.expect_err("in use"));
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("lc-1") && msg.contains("lc-5"), "{msg}");
    assert!(shared.path.join("templates/golden.qcow2").is_file());

    // Without its clones it goes, image and all.
    for i in 1..=5 {
        let name = format!("lc-{i}");
        let t = c.vm_action(&name, VmAction::Stop, json!({})).await.unwrap();
        run_task(c, t).await;
        let t = c.delete_vm(&name).await.unwrap();
        run_task(c, t).await;
    }
    dhcp_clone(&lab).await;
    c.delete_template("golden")
        .await
        .expect("unused template deleted");
    assert!(!shared.path.join("templates/golden.qcow2").exists());
    assert!(c.template("golden").await.is_err());
}

/// A DHCP server on the lab network (busybox `udhcpd` in host-1's
/// namespace, on its VM bridge, leasing `.220`–`.229`, outside vdc's
/// pool), stopped when dropped.
struct DhcpServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl DhcpServer {
    fn start(lab: &TestLab) -> DhcpServer {
        let n = lab.info.subnet_index;
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("udhcpd.conf");
        let leases = dir.path().join("leases");
        std::fs::write(&leases, b"").expect("lease file");
        std::fs::write(
            &conf,
            format!(
                "start 10.77.{n}.220\nend 10.77.{n}.229\ninterface vmbr0\nmax_leases 10\n\
                 lease_file {}\npidfile {}\nopt subnet 255.255.255.0\nopt lease 600\n",
                leases.display(),
                dir.path().join("pid").display()
            ),
        )
        .expect("udhcpd.conf");
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.netns("host-1"),
                "busybox",
                "udhcpd",
                "-f",
            ])
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start udhcpd");
        DhcpServer { child, _dir: dir }
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("cannot stop udhcpd: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("cannot reap udhcpd: {e}");
        }
    }
}

/// Guest customization with DHCP: a linked clone of "golden" made with
/// `dhcp` takes its address from the network's DHCP server and answers
/// on it with its customized hostname.
async fn dhcp_clone(lab: &TestLab) {
    let c = &lab.client;
    let n = lab.info.subnet_index;
    let _server = DhcpServer::start(lab);
    let t = c
        .create_vm(&CreateVmRequest {
            name: "lc-dhcp".into(),
            template: Some("golden".into()),
            linked_clone: true,
            memory_mib: Some(80),
            start: true,
            hostname: Some("leased".into()),
            dhcp: true,
            ..Default::default()
        })
        .await
        .expect("linked clone with DHCP accepted");
    run_task(c, t).await;
    let v = running(c, "lc-dhcp").await;
    let ip = v.guest.address.clone().expect("the leased address");
    let last: u8 = ip
        .strip_prefix(&format!("10.77.{n}."))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("address {ip} is not on the lab network"));
    assert!(
        (220..=229).contains(&last),
        "{ip} is not from the DHCP server's range"
    );
    assert_eq!(ask(lab, &ip, "note"), ("leased".into(), "from-src".into()));
    let t = c
        .vm_action("lc-dhcp", VmAction::Stop, json!({}))
        .await
        .unwrap();
    run_task(c, t).await;
    let t = c.delete_vm("lc-dhcp").await.unwrap();
    run_task(c, t).await;
}

/// V2V: a VMDK made by `qemu-img convert` imports as a new VM and boots;
/// bad input (a missing file, an unsupported format, a stated format the
/// content contradicts, a name taken) is refused with nothing made.
#[tokio::test(flavor = "multi_thread")]
async fn a_vmdk_imports_and_boots() {
    use vdc_types::api::ImageFormat;
    use vdc_types::clone::ImportDiskRequest;
    let lab = TestLab::start(1).await;
    let c = &lab.client;
    let import = lab.info.data_dir.join("import");
    let vmdk = import.join("guest.vmdk");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "vmdk"])
        .arg(vdc_test_infra::guest_image())
        .arg(&vmdk)
        .status()
        .unwrap();
    assert!(status.success());
    let vdi = import.join("disk.vdi");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "vdi"])
        .arg(&vdi)
        .arg("16M")
        .status()
        .unwrap();
    assert!(status.success());
    let req = |name: &str, source: &std::path::Path| ImportDiskRequest {
        name: name.into(),
        source: source.display().to_string(),
        memory_mib: Some(96),
        start: true,
        ..Default::default()
    };
    let refused = [
        (
            req("v2v", &import.join("missing.vmdk")),
            ErrorCode::NotFound,
        ),
        (req("v2v", &vdi), ErrorCode::InvalidInput),
        (
            ImportDiskRequest {
                format: Some(ImageFormat::Vhdx),
                ..req("v2v", &vmdk)
            },
            ErrorCode::InvalidInput,
        ),
    ];
    for (r, want) in refused {
        let (code, msg) = api_code(c.import_disk(&r).await.expect_err("refused"));
        assert_eq!(code, want, "{msg}");
        assert!(c.get_vm("v2v").await.is_err(), "a refusal made a VM: {msg}");
    }
    let t = c
        .import_disk(&req("v2v", &vmdk))
        .await
        .expect("import accepted");
    assert_eq!(t.kind, "vm.create");
    run_task(c, t).await;
    let v = running(c, "v2v").await;
    assert_eq!(v.guest.hostname.as_deref(), Some("v2v"));
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(shared.path.join("v2v/disk0.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "{info}");
    let (code, _) = api_code(
        c.import_disk(&req("v2v", &vmdk))
            .await
            .expect_err("name taken"),
    );
    assert_eq!(code, ErrorCode::AlreadyExists);

    // OVA export: refused while it runs; powered off, a tar with the
    // descriptor first, a manifest whose digests hold, streamOptimized
    // VMDKs qemu-img reads.
    let ova = import.join("v2v.ova");
    let export = vdc_types::ova::ExportVmRequest {
        ova: ova.display().to_string(),
        host: None,
    };
    let (code, _) = api_code(c.export_vm("v2v", &export).await.expect_err("running"));
    assert_eq!(code, ErrorCode::InvalidState);
    let t = c.vm_action("v2v", VmAction::Stop, json!({})).await.unwrap();
    run_task(c, t).await;
    let t = c.export_vm("v2v", &export).await.expect("export accepted");
    assert_eq!(t.kind, "vm.export");
    run_task(c, t).await;
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&ova)
        .output()
        .unwrap();
    let members: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(members, ["v2v.ovf", "v2v.mf", "v2v-disk0.vmdk"]);
    let out = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&ova)
        .arg("-C")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success());
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(out.path().join("v2v-disk0.vmdk"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "vmdk", "{info}");
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{info}"
    );
    let mf = std::fs::read_to_string(out.path().join("v2v.mf")).unwrap();
    let sums = std::process::Command::new("sha256sum")
        .arg("v2v.ovf")
        .arg("v2v-disk0.vmdk")
        .current_dir(out.path())
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&sums.stdout).lines() {
        let (hex, file) = line.split_once("  ").unwrap();
        assert!(mf.contains(&format!("SHA256({file})= {hex}")), "{mf}");
    }
    let ovf = std::fs::read_to_string(out.path().join("v2v.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>96</rasd:VirtualQuantity>"),
        "{ovf}"
    );
    assert!(ovf.contains("byte * 2^20"), "{ovf}");
    // An existing file is not overwritten: the task fails, the file stays.
    let t = c.export_vm("v2v", &export).await.unwrap();
    let err = c
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect_err("file exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(ova.is_file());

    // Bad OVAs, each refused with nothing made.
    let dir = out.path();
    let pack = |name: &str, files: &[&str]| {
        let path = import.join(name);
        let st = std::process::Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&path)
            .arg("-C")
            .arg(dir)
            .args(files)
            .status()
            .unwrap();
        assert!(st.success());
        path
    };
    let bytes = std::fs::read(&ova).unwrap();
    let truncated = import.join("truncated.ova");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let no_disk = pack("nodisk.ova", &["v2v.ovf"]);
    let disk_first = pack("diskfirst.ova", &["v2v-disk0.vmdk", "v2v.ovf"]);
    let mut bad_mf = mf.clone();
    let at = bad_mf.find("= ").unwrap() + 2;
    let flipped = if &bad_mf[at..at + 1] == "0" { "1" } else { "0" };
    bad_mf.replace_range(at..at + 1, flipped);
    std::fs::write(dir.join("v2v.mf"), &bad_mf).unwrap();
    let bad_digest = pack("baddigest.ova", &["v2v.ovf", "v2v.mf", "v2v-disk0.vmdk"]);
    std::fs::remove_file(dir.join("v2v.mf")).unwrap();
    std::fs::write(
        dir.join("v2v.ovf"),
        ovf.replace(
            "<rasd:VirtualQuantity>96</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>99000000</rasd:VirtualQuantity>",
        ),
    )
    .unwrap();
    let huge = pack("huge.ova", &["v2v.ovf", "v2v-disk0.vmdk"]);
    std::fs::write(dir.join("v2v.ovf"), &ovf).unwrap();
    let ova_req = |source: &std::path::Path| vdc_types::ova::ImportOvaRequest {
        source: source.display().to_string(),
        name: Some("from-ova".into()),
        start: true,
        ..Default::default()
    };
    for (file, want, says) in [
        (&truncated, ErrorCode::InvalidInput, "truncated"),
        (&no_disk, ErrorCode::InvalidInput, "missing"),
        (&disk_first, ErrorCode::InvalidInput, "descriptor"),
        (&bad_digest, ErrorCode::InvalidInput, "digest"),
        (&huge, ErrorCode::InsufficientCapacity, "memory"),
    ] {
        let (code, msg) = api_code(c.import_ova(&ova_req(file)).await.expect_err("bad OVA"));
        assert_eq!(code, want, "{}: {msg}", file.display());
        assert!(msg.contains(says), "{}: {msg}", file.display());
        assert!(
            c.get_vm("from-ova").await.is_err(),
            "a refused import made a VM"
        );
    }
    let mut mapped = ova_req(&ova);
    mapped.network_map.insert("nowhere".into(), "lab".into());
    let (code, _) = api_code(c.import_ova(&mapped).await.expect_err("unknown network"));
    assert_eq!(code, ErrorCode::InvalidInput);

    // The exported OVA imports and boots.
    let r = c.import_ova(&ova_req(&ova)).await.expect("import accepted");
    assert_eq!(r.vm, "from-ova");
    assert!(
        r.ignored.iter().any(|i| i.contains("SCSI controller")),
        "{:?}",
        r.ignored
    );
    run_task(c, r.task).await;
    let v = running(c, "from-ova").await;
    assert_eq!(v.memory_mib, 96);
    assert_eq!(v.guest.hostname.as_deref(), Some("from-ova"));
    let t = c
        .vm_action("from-ova", VmAction::Stop, json!({}))
        .await
        .unwrap();
    run_task(c, t).await;

    two_disks_and_two_nics(&lab, dir, &import).await;
}

/// An OVA with two disks and two NICs (written here by `vdc_ovf`, from the
/// disk an export made) imports whole: every disk and every NIC, none
/// reported as ignored; it boots and answers on its first NIC's address.
async fn two_disks_and_two_nics(lab: &TestLab, dir: &std::path::Path, import: &std::path::Path) {
    let c = &lab.client;
    let vmdk = dir.join("v2v-disk0.vmdk");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vmdk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let capacity = info["virtual-size"].as_u64().expect("virtual size");
    let size = std::fs::metadata(&vmdk).unwrap().len();
    let mut disks = Vec::new();
    for i in 0..2 {
        let file = format!("two-disk{i}.vmdk");
        std::fs::copy(&vmdk, dir.join(&file)).unwrap();
        disks.push(vdc_ovf::OvfDisk {
            file,
            file_size: Some(size),
            capacity_bytes: capacity,
        });
    }
    let nic = vdc_ovf::OvfNic {
        network: "lab".into(),
        mac: None,
    };
    let descriptor = vdc_ovf::write_descriptor(&vdc_ovf::OvfSystem {
        name: "two".into(),
        cpus: 1,
        memory_mib: 96,
        disks,
        nics: vec![nic.clone(), nic],
    });
    std::fs::write(dir.join("two.ovf"), descriptor).unwrap();
    let ova = import.join("two.ova");
    let st = std::process::Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&ova)
        .arg("-C")
        .arg(dir)
        .args(["two.ovf", "two-disk0.vmdk", "two-disk1.vmdk"])
        .status()
        .unwrap();
    assert!(st.success());
    let r = c
        .import_ova(&vdc_types::ova::ImportOvaRequest {
            source: ova.display().to_string(),
            start: true,
            ..Default::default()
        })
        .await
        .expect("import accepted");
    assert!(
        !r.ignored
            .iter()
            .any(|i| i.contains("disk") || i.contains("NIC")),
        "{:?}",
        r.ignored
    );
    run_task(c, r.task).await;
    let v = running(c, "two").await;
    assert_eq!(v.disks.len(), 2, "{:?}", v.disks);
    assert_eq!(v.nics.len(), 2, "{:?}", v.nics);
    assert!(v.nics.iter().all(|n| n.network == "lab" && n.ip.is_some()));
    assert_ne!(v.nics[0].ip, v.nics[1].ip);
    assert_ne!(v.nics[0].mac, v.nics[1].mac);
    let ip = v.guest.address.clone().expect("address");
    let greeting =
        vdc_test_infra::wait_until(Duration::from_secs(120), "the guest's service", || {
            lab.guest_request("host-1", &ip, &[]).ok()
        });
    assert!(greeting[0].starts_with("two "), "{greeting:?}");
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(shared.path.join("two/disk1.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(capacity), "{info}");
    let lines = lab.qemu_command_lines("two");
    let netdevs = lines
        .iter()
        .flat_map(|(_, args)| args.iter())
        .filter(|a| a.starts_with("virtio-net-pci,"))
        .count();
    assert_eq!(netdevs, 2, "{lines:?}");
}
