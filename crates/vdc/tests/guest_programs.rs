//! Checks of the guest image's C programs (guest/src) run on the host: the
//! same source the image build compiles, with the same gcc flags. What
//! needs a guest (the TCP commands that start them, the UDP service) is
//! checked on a real guest in `e2e_guest_load.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `guest/src/NAME.c` as scripts/build-guest-image.sh does.
fn compile(name: &str, dir: &Path) -> PathBuf {
    let src = vdc_test_infra::repo_root()
        .join("guest/src")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

/// `key=value` from a vdc-dirty stats line.
fn field<'a>(stats: &'a str, key: &str) -> &'a str {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in stats {stats:?}"))
}

#[test]
fn vdc_dirty_dirties_the_pages_asked_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile("vdc-dirty", dir.path());
    let stats = dir.path().join("stats");
    let pid = dir.path().join("pid");
    for (rate, pages) in [("100", "2560"), ("max", "100000"), ("7", "300")] {
        let out = Command::new(&prog)
            .args(["-r", rate, "-b", "4", "-n", pages, "-s"])
            .arg(&stats)
            .arg("-p")
            .arg(&pid)
            .output()
            .unwrap();
        // Exit 0 also means every page of the buffer held non-zero data.
        assert!(
            out.status.success(),
            "rate {rate}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = std::fs::read_to_string(&stats).unwrap();
        assert_eq!(field(&line, "rate"), rate, "{line}");
        assert_eq!(field(&line, "buffer_mib"), "4", "{line}");
        assert_eq!(field(&line, "pages"), pages, "{line}");
        let mib: u64 = field(&line, "mib").parse().unwrap();
        assert_eq!(mib, (pages.parse::<u64>().unwrap() * 4096) >> 20, "{line}");
        let written: u32 = std::fs::read_to_string(&pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(written > 0, "pid file of rate {rate}");
    }
}

#[test]
fn vdc_dirty_refuses_bad_input_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile("vdc-dirty", dir.path());
    for (args, says) in [
        (vec!["-r", "fast"], "-r: give a rate in MiB/s"),
        (vec!["-r", "-5"], "-r: give a rate in MiB/s"),
        (vec!["-r", "2000000"], "-r: give a rate in MiB/s"),
        (vec!["-b", "0"], "-b: give a buffer size in MiB"),
        (vec!["-b", "5000"], "-b: give a buffer size in MiB"),
        (vec!["-n", "0"], "-n: give a number of pages"),
        (vec!["extra"], "unexpected argument"),
    ] {
        let out = Command::new(&prog).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("usage: vdc-dirty"), "{args:?}: {err}");
    }
}

#[test]
fn vdc_echo_answers_each_datagram_with_boot_id_counter_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile("vdc-echo", dir.path());
    // A free UDP port: bind, read it, release it for the program.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&prog).arg(port.to_string()).spawn().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    // Resend until the program is up and answers (deadline 10 s).
    let answer = vdc_test_infra::wait_until(
        std::time::Duration::from_secs(10),
        "vdc-echo answers",
        || {
            sock.send_to(b"seq 42", ("127.0.0.1", port)).ok()?;
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let parts: Vec<&str> = answer.split(' ').collect();
    assert_eq!(parts.len(), 4, "{answer:?}");
    assert_eq!(parts[0], boot_id.trim());
    parts[1].parse::<u64>().expect("a numeric counter");
    assert_eq!(&parts[2..], ["seq", "42"]);
}
