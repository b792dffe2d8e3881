//! End-to-end tests of the `vdc` command line against a real lab: the
//! binary is run as an administrator would run it (`VDC_URL` and
//! `VDC_TOKEN_FILE` in the environment, no terminal), and the tests check
//! what they would see — exit codes, tables, the JSON of `-o json`, error
//! messages, the event stream and the guest's console.
//!
//! Two tests, each with a lab of its own:
//! 1. the cluster as the CLI shows it (hosts, datastores, `lab status`),
//!    input the CLI must refuse, and a VM created, refused deletion without
//!    `--yes` and deleted — without booting it;
//! 2. one VM through its life: create, start, the guest ready on the
//!    console, events, stop, delete, and the tasks that did it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vdc_test_infra::TestLab;

const TEMPLATE: &str = "debian-busybox";
/// Longest run of one command (task waits included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a state the server should show within seconds (a
/// loaded machine stretches seconds).
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// Exit codes of the CLI (see `crates/vdc/src/error.rs`).
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_CONFLICT: i32 = 4;

/// How to run the `vdc` binary against one lab.
#[derive(Clone)]
struct Vdc {
    url: String,
    token_file: std::path::PathBuf,
}

/// One finished run of `vdc`.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "`vdc {}` exited with {:?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Panics unless the command exited 0.
    fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "expected success: {}", self.describe());
        self
    }

    /// Panics unless the command exited with `code`.
    fn exit(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}: {}",
            self.describe()
        );
        self
    }

    /// Panics unless the command failed and `needle` is in its stderr
    /// (case-insensitive).
    fn fails_with(self, needle: &str) -> Run {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure: {}",
            self.describe()
        );
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected {needle:?} on stderr: {}",
            self.describe()
        );
        self
    }

    /// Standard output parsed as one JSON value.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

impl Vdc {
    fn new(lab: &TestLab) -> Vdc {
        Vdc {
            url: lab.info.api_url.clone(),
            token_file: lab.info.token_file.clone(),
        }
    }

    /// The command with the lab's connection settings and no terminal.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vdc"));
        cmd.args(args)
            .env_remove("VDC_TOKEN")
            .env("VDC_URL", &self.url)
            .env("VDC_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `vdc args...` to the end (killed after [`COMMAND_TIMEOUT`]).
    fn run_blocking(&self, args: &[&str]) -> Run {
        let shown: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run vdc {shown:?}: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let run = Run {
                        args: shown,
                        code: None,
                        stdout: stdout.join().unwrap_or_default(),
                        stderr: stderr.join().unwrap_or_default(),
                    };
                    panic!("timed out after {COMMAND_TIMEOUT:?}: {}", run.describe());
                }
                Err(e) => panic!("waiting for vdc {shown:?}: {e}"),
            }
        };
        Run {
            args: shown,
            code: status.code(),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Runs `vdc args...` on a blocking thread.
    async fn run(&self, args: &[&str]) -> Run {
        let me = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            me.run_blocking(&refs)
        })
        .await
        .expect("the command thread panicked")
    }

    /// `vdc vm show NAME -o json`, polled until `pred` holds.
    async fn wait_vm(&self, name: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(&["vm", "show", name, "-o", "json"]).await;
            if run.code == Some(0) {
                if let Ok(vm) = serde_json::from_str::<Value>(&run.stdout) {
                    if pred(&vm) {
                        return vm;
                    }
                }
            }
            if Instant::now() >= deadline {
                let console = self.run(&["vm", "console", name, "--bytes", "4000"]).await;
                panic!(
                    "timed out after {timeout:?} waiting for VM '{name}'; last: {}\n\
                     ----- console -----\n{}",
                    run.describe(),
                    console.stdout
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts `vdc events -o json args...` in the background.
    fn events(&self, args: &[&str]) -> EventStream {
        let mut all = vec!["events", "-o", "json"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run vdc {all:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = drain(child.stderr.take());
        EventStream {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// A running `vdc events`, killed on drop.
struct EventStream {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl EventStream {
    /// Reads events until one satisfies `pred`; returns it.
    ///
    /// # Panics
    /// At the deadline or when the stream ends, with every line seen and
    /// the command's stderr.
    fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let parsed = serde_json::from_str::<Value>(&line);
                    self.seen.push(line);
                    let ev = parsed.unwrap_or_else(|e| {
                        panic!("event line is not JSON ({e}); lines: {:#?}", self.seen)
                    });
                    if pred(&ev) {
                        return ev;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let stderr = self.stop_and_stderr();
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; events seen: {:#?}\n\
                         ----- stderr -----\n{}",
                        self.seen, stderr
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let stderr = self.stop_and_stderr();
                    panic!(
                        "`vdc events` ended ({status:?}) before {what}; events seen: {:#?}\n\
                         ----- stderr -----\n{}",
                        self.seen, stderr
                    );
                }
            }
        }
    }

    fn stop_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_lab() -> TestLab {
    TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {v:#}"))
}

fn find_by_name<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    array(list)
        .iter()
        .find(|v| str_field(v, &["name"]) == Some(name))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_shows_the_cluster_and_refuses_bad_input() {
    let lab = start_lab().await;
    let vdc = Vdc::new(&lab);
    let expected: Vec<(String, String)> = lab
        .info
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.address.clone()))
        .collect();
    assert_eq!(expected.len(), 2);

    // Hosts: both connected, with name and address, in JSON and in a table.
    let deadline = Instant::now() + SHORT_TIMEOUT;
    let hosts = loop {
        let run = vdc.run(&["host", "list", "-o", "json"]).await.success();
        let hosts = run.json();
        let connected = array(&hosts)
            .iter()
            .filter(|h| str_field(h, &["state"]) == Some("connected"))
            .count();
        if connected == 2 {
            break hosts;
        }
        assert!(
            Instant::now() < deadline,
            "hosts not connected: {}",
            run.describe()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(array(&hosts).len(), 2, "{hosts:#}");
    for (name, address) in &expected {
        let h = find_by_name(&hosts, name).unwrap_or_else(|| panic!("no host {name}: {hosts:#}"));
        assert_eq!(str_field(h, &["address"]), Some(address.as_str()), "{h:#}");
    }
    let table = vdc.run(&["host", "list"]).await.success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("NAME")),
        "{}",
        table.describe()
    );
    for (name, address) in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(name.as_str())
                && l.contains(address.as_str())
                && l.contains("connected")
                && l.split_whitespace().any(|w| w == "emulated")),
            "no row for {name}: {}",
            table.describe()
        );
    }
    // The CPU baseline: TCG hosts keep the default model and run any.
    let cpu = vdc.run(&["host", "cpu-baseline"]).await.success();
    assert!(
        cpu.stdout.starts_with(&format!(
            "baseline: {} (mode auto;",
            vdc_types::vm::DEFAULT_CPU_MODEL
        )),
        "{}",
        cpu.describe()
    );
    for (name, _) in &expected {
        assert!(
            cpu.stdout
                .lines()
                .any(|l| l.starts_with(name.as_str()) && l.contains("emulated")),
            "{}",
            cpu.describe()
        );
    }

    // Datastores: one shared, one local per host.
    let ds = vdc
        .run(&["datastore", "list", "-o", "json"])
        .await
        .success()
        .json();
    let kinds: Vec<(&str, Option<&str>)> = array(&ds)
        .iter()
        .map(|d| {
            (
                str_field(d, &["kind", "type"]).unwrap_or("?"),
                str_field(d, &["kind", "host"]),
            )
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|(k, _)| *k == "shared").count(),
        1,
        "{ds:#}"
    );
    for (name, _) in &expected {
        assert!(
            kinds.contains(&("local", Some(name.as_str()))),
            "no local datastore of {name}: {ds:#}"
        );
    }
    assert_eq!(kinds.len(), 3, "{ds:#}");
    // The lab's datastores are on a file system that takes direct I/O, so
    // their disks run with cache=none; the table says so.
    for d in array(&ds) {
        assert_eq!(str_field(d, &["cache_mode"]), Some("none"), "{d:#}");
    }
    let table = vdc.run(&["datastore", "list"]).await.success();
    assert!(
        table
            .stdout
            .lines()
            .next()
            .is_some_and(|l| l.contains("CACHE") && l.contains("DIRECT-IO")),
        "{}",
        table.describe()
    );

    // The lab's own view: each host's name, namespace and address.
    let state_root = lab.spec.state_root.to_string_lossy().into_owned();
    let status = vdc
        .run(&[
            "lab",
            "status",
            "--lab-id",
            &lab.info.lab_id,
            "--state-root",
            &state_root,
            "-o",
            "json",
        ])
        .await
        .success()
        .json();
    assert_eq!(
        str_field(&status, &["lab_id"]),
        Some(lab.info.lab_id.as_str())
    );
    let status_hosts = status.get("hosts").unwrap_or(&Value::Null);
    assert_eq!(array(status_hosts).len(), 2, "{status:#}");
    for h in &lab.info.hosts {
        let s = find_by_name(status_hosts, &h.name)
            .unwrap_or_else(|| panic!("lab status lacks {}: {status:#}", h.name));
        assert_eq!(str_field(s, &["netns"]), Some(h.netns.as_str()), "{s:#}");
        assert_eq!(
            str_field(s, &["address"]),
            Some(h.address.as_str()),
            "{s:#}"
        );
        assert_eq!(s.get("agent_alive"), Some(&Value::Bool(true)), "{s:#}");
    }

    // Input the CLI refuses, with exit codes scripts can tell apart.
    vdc.run(&["vm", "create", "bad name", "--template", TEMPLATE])
        .await
        .fails_with("name")
        .exit(EXIT_USAGE);
    vdc.run(&[
        "vm",
        "create",
        "big-1",
        "--template",
        TEMPLATE,
        "--memory",
        "100000G",
    ])
    .await
    .fails_with("memory")
    .exit(EXIT_USAGE);
    vdc.run(&["vm", "show", "nope"])
        .await
        .fails_with("not found")
        .exit(EXIT_NOT_FOUND);
    let run = vdc
        .run(&["vm", "show", "nope", "-o", "json"])
        .await
        .exit(EXIT_NOT_FOUND);
    let err = run.json();
    assert_eq!(
        str_field(&err, &["code"]),
        Some("not_found"),
        "{}",
        run.describe()
    );
    assert!(
        str_field(&err, &["message"]).is_some_and(|m| m.contains("nope")),
        "{}",
        run.describe()
    );
    // Images the agents refuse to import: a qcow2 whose backing file is a
    // host file (as probed, and given as raw: a raw file holding a qcow2
    // header), and a plain image outside the import directory and the
    // datastores. No template is left.
    let import_dir = lab.info.data_dir.join("import");
    let evil = import_dir.join("evil.img");
    let made = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
        ])
        .arg(&evil)
        .arg("1M")
        .status()
        .expect("run qemu-img");
    assert!(made.success());
    let evil_path = evil.to_string_lossy().into_owned();
    vdc.run(&[
        "template",
        "import",
        "stolen",
        "--datastore",
        "shared",
        "--source",
        &evil_path,
    ])
    .await
    .fails_with("backing file '/etc/shadow'")
    .exit(EXIT_USAGE);
    vdc.run(&[
        "template",
        "import",
        "stolen",
        "--datastore",
        "shared",
        "--source",
        &evil_path,
        "--format",
        "raw",
    ])
    .await
    .fails_with("qcow2 image header")
    .exit(EXIT_USAGE);
    let outside = lab.info.state_dir.join("outside.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&outside)
        .arg("1M")
        .status()
        .expect("run qemu-img");
    assert!(made.success());
    vdc.run(&[
        "template",
        "import",
        "outside",
        "--datastore",
        "shared",
        "--source",
        &outside.to_string_lossy(),
    ])
    .await
    .fails_with("not inside an import directory")
    .exit(EXIT_USAGE);
    let templates = vdc
        .run(&["template", "list", "-o", "json"])
        .await
        .success()
        .json();
    assert_eq!(
        array(&templates)
            .iter()
            .filter_map(|t| str_field(t, &["name"]))
            .collect::<Vec<_>>(),
        [TEMPLATE],
        "{templates:#}"
    );
    assert_eq!(
        str_field(&array(&templates)[0], &["source_format"]),
        Some("qcow2"),
        "{templates:#}"
    );

    // Nothing was created by the refused commands.
    let vms = vdc
        .run(&["vm", "list", "-o", "json"])
        .await
        .success()
        .json();
    assert!(array(&vms).is_empty(), "{vms:#}");

    // A VM created (not started), a second one with its name refused.
    let created = vdc
        .run(&[
            "vm",
            "create",
            "cli-0",
            "--template",
            TEMPLATE,
            "--memory",
            "128M",
            "-o",
            "json",
        ])
        .await
        .success()
        .json();
    assert_eq!(str_field(&created, &["name"]), Some("cli-0"), "{created:#}");
    assert_eq!(
        str_field(&created, &["state"]),
        Some("stopped"),
        "{created:#}"
    );
    assert_eq!(
        created.get("memory_mib"),
        Some(&Value::from(128)),
        "{created:#}"
    );
    assert_eq!(
        str_field(&created, &["template"]),
        Some(TEMPLATE),
        "{created:#}"
    );
    assert_eq!(
        str_field(&created, &["machine_type"]),
        Some(vdc_types::vm::DEFAULT_MACHINE_TYPE),
        "{created:#}"
    );
    assert_eq!(
        str_field(&created, &["cpu_model"]),
        Some(vdc_types::vm::DEFAULT_CPU_MODEL),
        "{created:#}"
    );
    vdc.run(&[
        "vm",
        "create",
        "cli-0",
        "--template",
        TEMPLATE,
        "--memory",
        "128M",
    ])
    .await
    .fails_with("already exists")
    .exit(EXIT_CONFLICT);
    let table = vdc.run(&["vm", "list"]).await.success();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("cli-0") && l.contains("stopped")),
        "{}",
        table.describe()
    );

    // Deleting without --yes and without a terminal is refused.
    vdc.run(&["vm", "delete", "cli-0"])
        .await
        .fails_with("--yes");
    let shown = vdc.run(&["vm", "show", "cli-0"]).await.success();
    assert!(
        shown.stdout.contains(vdc_types::vm::DEFAULT_MACHINE_TYPE)
            && shown.stdout.contains(vdc_types::vm::DEFAULT_CPU_MODEL)
            && shown.stdout.contains("cache none"),
        "{}",
        shown.describe()
    );
    let run = vdc.run(&["vm", "delete", "cli-0", "--yes"]).await.success();
    assert!(run.stdout.contains("cli-0"), "{}", run.describe());
    vdc.run(&["vm", "show", "cli-0"]).await.exit(EXIT_NOT_FOUND);

    // The tasks that did it.
    let tasks = vdc
        .run(&["task", "list", "-o", "json"])
        .await
        .success()
        .json();
    for kind in ["vm.create", "vm.delete"] {
        let t = array(&tasks)
            .iter()
            .find(|t| {
                str_field(t, &["kind"]) == Some(kind) && str_field(t, &["target"]) == Some("cli-0")
            })
            .unwrap_or_else(|| panic!("no {kind} task for cli-0: {tasks:#}"));
        assert_eq!(str_field(t, &["state"]), Some("succeeded"), "{t:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_runs_a_vm_through_its_life() {
    let lab = start_lab().await;
    let vdc = Vdc::new(&lab);
    let host_names: Vec<String> = lab.info.hosts.iter().map(|h| h.name.clone()).collect();

    // Events of VMs, from before anything happens to them.
    let mut events = vdc.events(&["--topic", "vm.*"]);

    let run = vdc
        .run(&[
            "vm",
            "create",
            "cli-1",
            "--template",
            TEMPLATE,
            "--memory",
            "128M",
        ])
        .await
        .success();
    assert!(
        run.stdout.lines().any(|l| l.starts_with("cli-1")),
        "{}",
        run.describe()
    );
    vdc.run(&[
        "vm",
        "create",
        "cli-1",
        "--template",
        TEMPLATE,
        "--memory",
        "128M",
    ])
    .await
    .fails_with("already exists");

    // --wait-ready returns once the guest itself reports ready.
    let vm = vdc
        .run(&[
            "vm",
            "start",
            "cli-1",
            "--wait-ready",
            "--wait-timeout",
            "300",
            "-o",
            "json",
        ])
        .await
        .success()
        .json();
    assert_eq!(str_field(&vm, &["state"]), Some("running"), "{vm:#}");
    assert_eq!(
        vm.pointer("/guest/ready"),
        Some(&Value::Bool(true)),
        "{vm:#}"
    );
    let host = str_field(&vm, &["owner"]).unwrap_or_else(|| panic!("no host: {vm:#}"));
    assert!(host_names.iter().any(|h| h == host), "{vm:#}");
    let address = str_field(&vm, &["guest", "address"])
        .unwrap_or_else(|| panic!("no guest address: {vm:#}"))
        .to_string();
    assert!(address.parse::<std::net::IpAddr>().is_ok(), "{vm:#}");

    // The list shows it with what an administrator looks for.
    let vms = vdc
        .run(&["vm", "list", "-o", "json"])
        .await
        .success()
        .json();
    let listed = find_by_name(&vms, "cli-1").unwrap_or_else(|| panic!("cli-1 not listed: {vms:#}"));
    assert_eq!(str_field(listed, &["state"]), Some("running"), "{listed:#}");
    assert_eq!(str_field(listed, &["owner"]), Some(host), "{listed:#}");
    assert_eq!(
        str_field(listed, &["guest", "address"]),
        Some(address.as_str()),
        "{listed:#}"
    );
    assert_eq!(
        listed.pointer("/guest/ready"),
        Some(&Value::Bool(true)),
        "{listed:#}"
    );
    let table = vdc.run(&["vm", "list"]).await.success();
    assert!(
        table.stdout.lines().any(|l| l.starts_with("cli-1")
            && l.contains("running")
            && l.contains(host)
            && l.contains(address.as_str())),
        "{}",
        table.describe()
    );

    // `vm show` names its owner, no operation in flight, and what can be
    // done with it now; a refused action says why.
    let show = vdc.run(&["vm", "show", "cli-1"]).await.success();
    let line = |key: &str| {
        show.stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line: {}", show.describe()))
            .to_string()
    };
    assert!(line("owner:").ends_with(host), "{}", show.describe());
    assert!(line("operation:").ends_with('-'), "{}", show.describe());
    let actions = line("actions:");
    assert!(
        actions.contains("pause") && actions.contains("suspend") && !actions.contains("start"),
        "{}",
        show.describe()
    );
    vdc.run(&["vm", "start", "cli-1"])
        .await
        .fails_with("cannot start a VM that is running")
        .exit(EXIT_CONFLICT);

    // The guest's ready marker on its serial console.
    let deadline = Instant::now() + SHORT_TIMEOUT;
    loop {
        let run = vdc.run(&["vm", "console", "cli-1"]).await.success();
        if run.stdout.contains("VDC-GUEST-READY") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ready marker: {}",
            run.describe()
        );
        tokio::time::sleep(POLL).await;
    }

    // The stream told of it, with the address the guest reported.
    tokio::task::block_in_place(|| {
        events.wait_for(SHORT_TIMEOUT, "vm.guest_ready of cli-1", |ev| {
            str_field(ev, &["object"]) == Some("cli-1")
                && str_field(ev, &["topic"]) == Some("vm.guest_ready")
                && str_field(ev, &["data", "address"]) == Some(address.as_str())
        })
    });

    // Power off: the state and the stream say stopped.
    let stopped = vdc
        .run(&["vm", "stop", "cli-1", "-o", "json"])
        .await
        .success()
        .json();
    assert_eq!(str_field(&stopped, &["name"]), Some("cli-1"), "{stopped:#}");
    vdc.wait_vm("cli-1", SHORT_TIMEOUT, |v| {
        str_field(v, &["state"]) == Some("stopped")
    })
    .await;
    tokio::task::block_in_place(|| {
        events.wait_for(SHORT_TIMEOUT, "cli-1 stopped on the event stream", |ev| {
            str_field(ev, &["object"]) == Some("cli-1")
                && (ev.pointer("/data/to") == Some(&Value::from("stopped"))
                    || str_field(ev, &["message"]).is_some_and(|m| m.contains("stopped")))
        })
    });
    drop(events);

    // Delete: refused without --yes, done with it.
    vdc.run(&["vm", "delete", "cli-1"])
        .await
        .fails_with("--yes");
    let still = vdc
        .run(&["vm", "show", "cli-1", "-o", "json"])
        .await
        .success()
        .json();
    assert_eq!(str_field(&still, &["state"]), Some("stopped"), "{still:#}");
    vdc.run(&["vm", "delete", "cli-1", "--yes"]).await.success();
    vdc.run(&["vm", "show", "cli-1"])
        .await
        .fails_with("not found")
        .exit(EXIT_NOT_FOUND);

    // Every task on cli-1 succeeded (the refused create started none), and
    // each can be shown by its id.
    let tasks = vdc
        .run(&["task", "list", "-o", "json"])
        .await
        .success()
        .json();
    let mine: Vec<&Value> = array(&tasks)
        .iter()
        .filter(|t| str_field(t, &["target"]) == Some("cli-1"))
        .collect();
    for kind in ["vm.create", "vm.start", "vm.stop", "vm.delete"] {
        assert!(
            mine.iter().any(|t| str_field(t, &["kind"]) == Some(kind)),
            "no {kind} task: {tasks:#}"
        );
    }
    for t in &mine {
        assert_eq!(str_field(t, &["state"]), Some("succeeded"), "{t:#}");
        let id = str_field(t, &["id"]).unwrap_or_else(|| panic!("task without id: {t:#}"));
        let shown = vdc
            .run(&["task", "show", id, "-o", "json"])
            .await
            .success()
            .json();
        assert_eq!(str_field(&shown, &["id"]), Some(id), "{shown:#}");
        assert_eq!(
            str_field(&shown, &["kind"]),
            str_field(t, &["kind"]),
            "{shown:#}"
        );
        assert_eq!(
            str_field(&shown, &["state"]),
            Some("succeeded"),
            "{shown:#}"
        );
    }
    let table = vdc.run(&["task", "list"]).await.success();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("vm.start") && l.contains("cli-1")),
        "{}",
        table.describe()
    );
}
