//! What to run ([`MachineSpec`]), where its files go ([`VmPaths`]) and the
//! QEMU command line that results ([`command_line`]).
//!
//! Choices baked into the command line, and why:
//! - `-machine` the VM's pinned, versioned machine type (e.g.
//!   `pc-q35-10.0`, Q35 being the PCIe machine of modern management
//!   stacks), never an alias such as `q35`, which moves to a newer type
//!   when QEMU is upgraded: the virtual hardware stays the same across
//!   upgrades, suspend/resume and migration.
//! - `-cpu` the VM's named CPU model (e.g. `Nehalem-v1`), the same under KVM
//!   and TCG and on every host; never `host` (differs between hosts, cannot
//!   migrate) nor `max` (changes with the QEMU version).
//! - `-nodefaults -no-user-config`: only the devices listed here exist, so
//!   the machine is identical on every host (a migration requirement).
//! - No `-S`: a fresh VM runs as soon as QEMU is up. An incoming VM
//!   (`-incoming defer`) waits for `migrate-incoming` anyway. Only a VM
//!   prepared ahead of its lease ([`MachineSpec::paused`], an HA restart)
//!   starts with `-S`: disks opened, vCPUs stopped until `cont`; and the
//!   destination of a live migration with storage
//!   ([`Incoming::DeferPaused`]), so that its guest runs only once the
//!   source's disk mirrors finished.
//! - No `-no-shutdown`: a guest power-off ends the QEMU process, which is
//!   how the agent learns the VM stopped; a guest reboot is a `RESET` inside
//!   the same process and needs nothing from us.
//! - Disks as `-blockdev` JSON (a `file` node below a `qcow2` node with
//!   explicit node names, so later block jobs can name them) with
//!   `discard=unmap` so guest TRIM keeps images thin. Cache mode per disk:
//!   `none` (`cache.direct=true`: O_DIRECT, no host page cache, so nothing
//!   a host holds back can be lost or hidden from another host on shared
//!   storage) where the datastore's file system supports it, else
//!   `writeback` (`cache.direct=false`, e.g. on tmpfs).
//! - Serial console through a socket chardev with a logfile, so the console
//!   is both recorded and attachable; the guest channel is a virtio-serial
//!   port on its own socket.
//! - The QEMU guest agent channel (virtio-serial port
//!   `org.qemu.guest_agent.0` on the same bus, socket `qga.sock`) only
//!   where [`MachineSpec::guest_agent`] says so: it is part of the VM's
//!   pinned device model, so a VM created before the channel existed keeps
//!   running, resuming and migrating without it.

use std::path::{Path, PathBuf};

use serde_json::json;
use vdc_types::{Accelerator, DiskCacheMode, GUEST_AGENT_CHANNEL_NAME, GUEST_CHANNEL_NAME};

use crate::error::QemuError;

/// Longest path that fits in `sockaddr_un.sun_path` with its NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// A VM to run: everything QEMU needs, resolved to host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// VM id, a UUID (becomes the SMBIOS system UUID, `-uuid`).
    pub id: String,
    /// VM name (`-name`).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Accelerator ([`crate::detect_accelerator`]).
    pub accelerator: Accelerator,
    /// Pinned machine type, e.g. `pc-q35-10.0`.
    pub machine_type: String,
    /// Named CPU model, e.g. `Nehalem-v1`.
    pub cpu_model: String,
    /// Disks; the first one boots.
    pub disks: Vec<DriveSpec>,
    /// NICs.
    pub nics: Vec<NicDevice>,
    /// SMBIOS type 11 OEM strings, e.g. `vdc.hostname=web-1`.
    pub smbios_oem_strings: Vec<String>,
    /// Start waiting for an incoming migration instead of booting.
    pub incoming: Option<Incoming>,
    /// Start with the vCPUs stopped (`-S`) until `cont`: QEMU is ready
    /// (devices created, images opened and locked) but runs no guest code.
    pub paused: bool,
    /// Give the VM the QEMU guest agent channel (a virtio-serial port
    /// `org.qemu.guest_agent.0` on [`VmPaths::guest_agent_socket`]). Part
    /// of the device model: the same value for every start, resume and
    /// migration of one VM.
    pub guest_agent: bool,
    /// Spare PCIe root ports `hp0` … for NIC hot plug (part of the device
    /// model, like [`MachineSpec::guest_agent`]).
    pub hotplug_ports: u32,
}

/// One qcow2 disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Block node name of the qcow2 node (the file node is `NAME-file`),
    /// e.g. `disk0`.
    pub node_name: String,
    /// Image path.
    pub path: PathBuf,
    /// Open read-only.
    pub read_only: bool,
    /// Cache mode (direct I/O or the host page cache).
    pub cache: DiskCacheMode,
}

/// One virtio NIC on a tap device the caller already created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    /// Device id, e.g. `net0`.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Tap device name.
    pub tap: String,
    /// Hot-plug root port (`hp<port>`) the NIC sits on; `None`: the root
    /// complex.
    pub port: Option<u32>,
}

impl NicDevice {
    /// The `-netdev` value (and `netdev_add` arguments): the tap backend
    /// `hn-<id>`.
    pub fn netdev_opt(&self) -> String {
        format!(
            "tap,id=hn-{},ifname={},script=no,downscript=no",
            escape_opt(&self.id),
            escape_opt(&self.tap)
        )
    }

    /// The `-device` value: a virtio-net-pci on the root complex or on its
    /// hot-plug port.
    pub fn device_opt(&self) -> String {
        let id = escape_opt(&self.id);
        let mut d = format!(
            "virtio-net-pci,netdev=hn-{id},id={id},mac={}",
            escape_opt(&self.mac)
        );
        if let Some(p) = self.port {
            d.push_str(&format!(",bus={}", hotplug_port_id(p)));
        }
        d
    }
}

/// Device id of hot-plug root port `port`: `hp<port>`.
pub fn hotplug_port_id(port: u32) -> String {
    format!("hp{port}")
}

/// Where the memory state of a VM started with [`MachineSpec::incoming`]
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Resume a suspended VM from this state file.
    StateFile(PathBuf),
    /// Wait (`-incoming defer`) for a live migration the caller starts with
    /// `migrate-incoming`.
    Defer,
    /// As [`Incoming::Defer`], but the guest stays paused once the stream
    /// completed (`-S`): a live migration with storage runs it only after
    /// the source finished mirroring its disks, with `cont`.
    DeferPaused,
}

/// The files of one VM: runtime files (sockets, pidfile) in `run_dir`,
/// logs and state in the VM's datastore directory `vm_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// Runtime directory (`<state-dir>/vms/<id>`); keep it short, socket
    /// paths must stay under [`MAX_SOCKET_PATH`] bytes.
    pub run_dir: PathBuf,
    /// The VM's directory on its datastore.
    pub vm_dir: PathBuf,
}

impl VmPaths {
    /// Paths for a VM with the given directories.
    pub fn new(run_dir: impl Into<PathBuf>, vm_dir: impl Into<PathBuf>) -> VmPaths {
        VmPaths {
            run_dir: run_dir.into(),
            vm_dir: vm_dir.into(),
        }
    }

    /// QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    /// Guest channel socket (virtio-serial port `org.vdc.guest.0`).
    pub fn guest_socket(&self) -> PathBuf {
        self.run_dir.join("guest.sock")
    }

    /// QEMU guest agent socket (virtio-serial port
    /// `org.qemu.guest_agent.0`), see [`crate::qga`].
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.run_dir.join("qga.sock")
    }

    /// Serial console socket.
    pub fn console_socket(&self) -> PathBuf {
        self.run_dir.join("console.sock")
    }

    /// QEMU's pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }

    /// Serial console log (appended across runs).
    pub fn console_log(&self) -> PathBuf {
        self.vm_dir.join("console.log")
    }

    /// QEMU's stdout and stderr (appended across runs).
    pub fn qemu_log(&self) -> PathBuf {
        self.vm_dir.join("qemu.log")
    }

    /// Memory state of a suspended VM.
    pub fn suspend_state(&self) -> PathBuf {
        self.vm_dir.join("suspend.state")
    }

    /// Checks that every socket path fits in a unix socket address.
    pub fn check_socket_paths(&self) -> Result<(), QemuError> {
        for path in [
            self.qmp_socket(),
            self.guest_socket(),
            self.guest_agent_socket(),
            self.console_socket(),
        ] {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(QemuError::SocketPathTooLong {
                    path,
                    len,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        Ok(())
    }
}

/// Escapes a value for QEMU's `key=value,…` option syntax (commas doubled).
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_opt(path: &Path) -> String {
    escape_opt(&path.to_string_lossy())
}

/// The QEMU arguments (without the binary) that run `spec` with its files
/// at `paths`. Pure: no file is touched.
pub fn command_line(spec: &MachineSpec, paths: &VmPaths) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));

    push(&[
        "-name",
        &format!("guest={},debug-threads=on", escape_opt(&spec.name)),
    ]);
    push(&["-uuid", &spec.id]);
    push(&["-machine", &escape_opt(&spec.machine_type)]);
    push(&["-accel", spec.accelerator.as_str()]);
    push(&["-cpu", &escape_opt(&spec.cpu_model)]);
    push(&["-smp", &spec.cpus.max(1).to_string()]);
    push(&["-m", &format!("{}M", spec.memory_mib)]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
    ]);
    push(&["-msg", "timestamp=on"]);
    push(&["-pidfile", &paths.pidfile().to_string_lossy()]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path_opt(&paths.qmp_socket())),
    ]);

    // Serial console: recorded in console.log, attachable on console.sock.
    push(&[
        "-chardev",
        &format!(
            "socket,id=console0,path={},server=on,wait=off,logfile={},logappend=on",
            path_opt(&paths.console_socket()),
            path_opt(&paths.console_log())
        ),
        "-serial",
        "chardev:console0",
    ]);

    // Guest channel.
    push(&[
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!(
            "socket,id=guest0,path={},server=on,wait=off",
            path_opt(&paths.guest_socket())
        ),
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=guest0,name={GUEST_CHANNEL_NAME}"),
    ]);
    if spec.guest_agent {
        push(&[
            "-chardev",
            &format!(
                "socket,id=qga0,path={},server=on,wait=off",
                path_opt(&paths.guest_agent_socket())
            ),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_CHANNEL_NAME}"),
        ]);
    }

    for (i, disk) in spec.disks.iter().enumerate() {
        let file_node = format!("{}-file", disk.node_name);
        let cache = json!({"direct": disk.cache == DiskCacheMode::None, "no-flush": false});
        let file = json!({
            "driver": "file",
            "node-name": file_node,
            "filename": disk.path.to_string_lossy(),
            "cache": cache,
            "discard": "unmap",
            "read-only": disk.read_only,
        });
        let fmt = json!({
            "driver": "qcow2",
            "node-name": disk.node_name,
            "file": file_node,
            "cache": cache,
            "discard": "unmap",
            "read-only": disk.read_only,
        });
        let mut dev = format!(
            "virtio-blk-pci,drive={},id=blk-{}",
            escape_opt(&disk.node_name),
            escape_opt(&disk.node_name)
        );
        if i == 0 {
            dev.push_str(",bootindex=1");
        }
        push(&[
            "-blockdev",
            &file.to_string(),
            "-blockdev",
            &fmt.to_string(),
        ]);
        push(&["-device", &dev]);
    }

    for nic in spec.nics.iter().filter(|n| n.port.is_none()) {
        push(&["-netdev", &nic.netdev_opt(), "-device", &nic.device_opt()]);
    }

    if !spec.smbios_oem_strings.is_empty() {
        let values: Vec<String> = spec
            .smbios_oem_strings
            .iter()
            .map(|s| format!("value={}", escape_opt(s)))
            .collect();
        push(&["-smbios", &format!("type=11,{}", values.join(","))]);
    }

    push(&["-device", "virtio-balloon-pci,id=balloon0"]);

    // Hot-plug ports after every device of older VMs, so those keep their
    // PCI addresses; then the NICs hot-plugged onto them.
    for p in 0..spec.hotplug_ports {
        push(&[
            "-device",
            &format!("pcie-root-port,id={},chassis={}", hotplug_port_id(p), p + 1),
        ]);
    }
    for nic in spec.nics.iter().filter(|n| n.port.is_some()) {
        push(&["-netdev", &nic.netdev_opt(), "-device", &nic.device_opt()]);
    }

    if spec.incoming.is_some() {
        push(&["-incoming", "defer"]);
    } else if spec.paused {
        push(&["-S"]);
    }
    if spec.incoming == Some(Incoming::DeferPaused) {
        push(&["-S"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            id: "0b6f1c52-8f0e-4c1f-9d55-3a1f4f0c2b11".into(),
            name: "web-1".into(),
            cpus: 2,
            memory_mib: 256,
            accelerator: Accelerator::Tcg,
            machine_type: "pc-q35-10.0".into(),
            cpu_model: "Nehalem-v1".into(),
            disks: vec![
                DriveSpec {
                    node_name: "disk0".into(),
                    path: "/ds/web-1/disk0.qcow2".into(),
                    read_only: false,
                    cache: DiskCacheMode::None,
                },
                DriveSpec {
                    node_name: "disk1".into(),
                    path: "/ds/web,1/disk1.qcow2".into(),
                    read_only: true,
                    cache: DiskCacheMode::Writeback,
                },
            ],
            nics: vec![NicDevice {
                id: "net0".into(),
                mac: "52:54:00:12:34:56".into(),
                tap: "vdct0".into(),
                port: None,
            }],
            smbios_oem_strings: vec!["vdc.hostname=web-1".into(), "vdc.x=a,b".into()],
            incoming: None,
            paused: false,
            guest_agent: false,
            hotplug_ports: 0,
        }
    }

    fn paths() -> VmPaths {
        VmPaths::new("/run/vdc/vms/abc", "/ds/web-1")
    }

    /// The value following each occurrence of `flag`.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn basics() {
        let args = command_line(&spec(), &paths());
        assert_eq!(
            values(&args, "-uuid"),
            ["0b6f1c52-8f0e-4c1f-9d55-3a1f4f0c2b11"]
        );
        assert_eq!(values(&args, "-name"), ["guest=web-1,debug-threads=on"]);
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(values(&args, "-machine"), ["pc-q35-10.0"]);
        assert_eq!(values(&args, "-cpu"), ["Nehalem-v1"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["256M"]);
        assert_eq!(values(&args, "-pidfile"), ["/run/vdc/vms/abc/qemu.pid"]);
        assert_eq!(
            values(&args, "-qmp"),
            ["unix:/run/vdc/vms/abc/qmp.sock,server=on,wait=off"]
        );
        assert!(args.iter().any(|a| a == "-nodefaults"));
        assert!(!args.iter().any(|a| a == "-no-shutdown" || a == "-S"));
        assert!(!args.iter().any(|a| a == "-incoming"));
        let paused = command_line(
            &MachineSpec {
                paused: true,
                ..spec()
            },
            &paths(),
        );
        assert_eq!(paused.iter().filter(|a| *a == "-S").count(), 1);
        let chardevs = values(&args, "-chardev");
        assert!(chardevs[0].contains("logfile=/ds/web-1/console.log,logappend=on"));
        assert!(chardevs[1].contains("path=/run/vdc/vms/abc/guest.sock"));
        assert!(values(&args, "-device")
            .contains(&"virtserialport,bus=vser0.0,chardev=guest0,name=org.vdc.guest.0"));
    }

    #[test]
    fn guest_agent_channel_only_when_asked() {
        let without = command_line(&spec(), &paths());
        assert!(!without.iter().any(|a| a.contains("qga")));
        let with = command_line(
            &MachineSpec {
                guest_agent: true,
                ..spec()
            },
            &paths(),
        );
        assert!(values(&with, "-chardev")
            .contains(&"socket,id=qga0,path=/run/vdc/vms/abc/qga.sock,server=on,wait=off"));
        assert!(values(&with, "-device")
            .contains(&"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        // The rest of the device model is unchanged.
        let rest: Vec<&String> = with.iter().filter(|a| !a.contains("qga")).collect();
        let before: Vec<&String> = without.iter().collect();
        assert_eq!(rest.len(), before.len() + 2);
    }

    #[test]
    fn kvm_keeps_the_named_cpu_model_and_machine_type() {
        let mut s = spec();
        s.accelerator = Accelerator::Kvm;
        let args = command_line(&s, &paths());
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["Nehalem-v1"]);
        assert_eq!(values(&args, "-machine"), ["pc-q35-10.0"]);
    }

    #[test]
    fn disks_are_blockdev_pairs_and_first_boots() {
        let args = command_line(&spec(), &paths());
        let nodes: Vec<serde_json::Value> = values(&args, "-blockdev")
            .iter()
            .map(|s| serde_json::from_str(s).expect("blockdev is JSON"))
            .collect();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0]["driver"], "file");
        assert_eq!(nodes[0]["node-name"], "disk0-file");
        assert_eq!(nodes[0]["filename"], "/ds/web-1/disk0.qcow2");
        assert_eq!(nodes[1]["driver"], "qcow2");
        assert_eq!(nodes[1]["file"], "disk0-file");
        assert_eq!(nodes[1]["discard"], "unmap");
        assert_eq!(nodes[1]["read-only"], false);
        // Direct I/O on the first disk's datastore, the page cache on the
        // second's, on both nodes of each.
        for (n, direct) in [(0, true), (1, true), (2, false), (3, false)] {
            assert_eq!(nodes[n]["cache"]["direct"], direct, "node {n}");
            assert_eq!(nodes[n]["cache"]["no-flush"], false, "node {n}");
        }
        // A comma in a path needs no escaping in JSON.
        assert_eq!(nodes[2]["filename"], "/ds/web,1/disk1.qcow2");
        assert_eq!(nodes[3]["read-only"], true);
        let devs = values(&args, "-device");
        assert!(devs.contains(&"virtio-blk-pci,drive=disk0,id=blk-disk0,bootindex=1"));
        assert!(devs.contains(&"virtio-blk-pci,drive=disk1,id=blk-disk1"));
    }

    #[test]
    fn nics_and_smbios() {
        let args = command_line(&spec(), &paths());
        assert_eq!(
            values(&args, "-netdev"),
            ["tap,id=hn-net0,ifname=vdct0,script=no,downscript=no"]
        );
        assert!(values(&args, "-device")
            .contains(&"virtio-net-pci,netdev=hn-net0,id=net0,mac=52:54:00:12:34:56"));
        assert_eq!(
            values(&args, "-smbios"),
            ["type=11,value=vdc.hostname=web-1,value=vdc.x=a,,b"]
        );
    }

    #[test]
    fn hotplug_ports_come_after_the_older_devices_and_carry_their_nics() {
        let none = command_line(&spec(), &paths());
        assert!(!none.iter().any(|a| a.starts_with("pcie-root-port")));
        let mut s = spec();
        s.hotplug_ports = 2;
        s.nics.push(NicDevice {
            id: "hpnet1".into(),
            mac: "52:54:00:12:34:57".into(),
            tap: "vdct101".into(),
            port: Some(1),
        });
        let args = command_line(&s, &paths());
        // The devices of a VM without ports keep their order (and so
        // their PCI addresses).
        assert_eq!(args[..none.len()], none[..]);
        let devices = values(&args, "-device");
        let n = devices.len();
        assert_eq!(
            devices[n - 3..],
            [
                "pcie-root-port,id=hp0,chassis=1",
                "pcie-root-port,id=hp1,chassis=2",
                "virtio-net-pci,netdev=hn-hpnet1,id=hpnet1,mac=52:54:00:12:34:57,bus=hp1",
            ]
        );
    }

    #[test]
    fn incoming_defers() {
        for inc in [
            Incoming::Defer,
            Incoming::DeferPaused,
            Incoming::StateFile("/ds/web-1/suspend.state".into()),
        ] {
            let mut s = spec();
            s.incoming = Some(inc.clone());
            let args = command_line(&s, &paths());
            assert_eq!(values(&args, "-incoming"), ["defer"]);
            assert_eq!(
                args.iter().any(|a| a == "-S"),
                inc == Incoming::DeferPaused,
                "{inc:?}"
            );
        }
    }

    #[test]
    fn escapes_commas_in_socket_paths() {
        let p = VmPaths::new("/run/a,b", "/ds/c,d");
        let args = command_line(&spec(), &p);
        assert_eq!(
            values(&args, "-qmp"),
            ["unix:/run/a,,b/qmp.sock,server=on,wait=off"]
        );
        assert!(values(&args, "-chardev")[0].contains("logfile=/ds/c,,d/console.log"));
    }

    #[test]
    fn socket_path_length_is_checked() {
        assert!(paths().check_socket_paths().is_ok());
        let long = VmPaths::new(format!("/run/{}", "x".repeat(100)), "/ds");
        match long.check_socket_paths() {
            Err(QemuError::SocketPathTooLong { len, max, .. }) => {
                assert!(len > max);
                assert_eq!(max, 107);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
