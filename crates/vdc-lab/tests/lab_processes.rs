//! `up` with a server that dies or never answers (needs root): the error
//! names the step and shows the server's log, and everything `up` made —
//! processes, namespaces, directories — is gone afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use vdc_lab::process::ProcessHandle;
use vdc_lab::{ip, LabError, LabSpec};

/// A stand-in `vdc` binary: a shell script with `body`.
fn fake_vdc(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("vdc");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A spec for lab `id` on the first free subnet among `candidates` (the
/// tests of this file scan different ranges, so they don't race each other).
/// `id` comes from [`vdc_test_infra::reserve_test_lab_id`]: a fixed id could
/// meet the leftovers of a crashed run, and `down` removes whatever carries
/// the id.
fn spec(
    dir: &Path,
    id: &str,
    mut candidates: impl Iterator<Item = u8>,
    vdc: std::path::PathBuf,
) -> LabSpec {
    let index = candidates
        .find(|i| vdc_lab::net::subnet_is_free(*i))
        .expect("a free test subnet");
    let mut spec = LabSpec::new(vdc);
    spec.lab_id = id.to_string();
    spec.hosts = 2;
    spec.subnet_index = Some(index);
    spec.state_root = dir.join("run");
    spec.data_root = dir.join("data");
    spec.import_template = false;
    spec.demo_vms = 0;
    spec.port = 1;
    spec.step_timeout = Duration::from_secs(3);
    spec
}

fn assert_nothing_left(spec: &LabSpec) {
    let netns = ip::netns_list().expect("netns");
    assert!(
        !netns
            .iter()
            .any(|n| vdc_lab::plan::is_lab_netns(&spec.lab_id, n)),
        "{netns:?}"
    );
    assert!(!ip::link_exists(&format!("{}br0", spec.lab_id)).expect("links"));
    assert!(!spec.state_root.join(&spec.lab_id).exists());
    assert!(!spec.data_root.join(&spec.lab_id).exists());
}

#[tokio::test]
async fn a_server_that_exits_fails_up_with_its_log_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vdc = fake_vdc(dir.path(), "echo \"cannot start: $1 $2 $3\" >&2; exit 3");
    let id = vdc_test_infra::reserve_test_lab_id().expect("a lab id");
    let spec = spec(dir.path(), id.id(), (230..=254).rev(), vdc);
    let err = vdc_lab::up(&spec).await.expect_err("server exits");
    match &err {
        LabError::ProcessExited { what, tail, .. } => {
            assert_eq!(what, "the vdc server");
            assert!(
                tail.contains("cannot start: server --listen 127.0.0.1:1"),
                "{tail}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_nothing_left(&spec);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("server.pid");
    let vdc = fake_vdc(
        dir.path(),
        &format!(
            "echo $$ > {}; echo waiting; exec sleep 600",
            pidfile.display()
        ),
    );
    let id = vdc_test_infra::reserve_test_lab_id().expect("a lab id");
    let spec = spec(dir.path(), id.id(), 201..230, vdc);
    let err = vdc_lab::up(&spec).await.expect_err("no API");
    match &err {
        LabError::Timeout { what, tail, .. } => {
            assert_eq!(what, "the vdc server API");
            assert!(tail.contains("waiting"), "{tail}");
        }
        other => panic!("unexpected error: {other}"),
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the fake server ran")
        .trim()
        .parse()
        .expect("pid");
    let server = ProcessHandle {
        pid,
        start_time: None,
    };
    assert!(
        !server.is_alive(),
        "the server {pid} survived the failed up"
    );
    assert_nothing_left(&spec);
}
