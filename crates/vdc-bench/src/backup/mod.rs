//! `vdc bench backup`: vdc's backup against restic and borg, in one run, on
//! the same disk image.
//!
//! Steps:
//!   1. write the image ([`image`]): mixed content, `--size-mib` MiB, as
//!      `disk.raw`; make the VM's disk from it (a qcow2 with vdc's
//!      persistent dirty bitmap, as a first backup leaves it);
//!   2. time a sequential read of the raw image (the ceiling);
//!   3. full backup by each system (vdc: encrypted store, like the peers'
//!      repositories);
//!   4. the change: `--change-percent` of the 4 MiB regions rewritten, in
//!      `disk.raw` (the peers' file) and in the qcow2 (written through
//!      QEMU, so that the bitmap records it);
//!   5. backup of the changed disk by each system;
//!   6. restore of the changed disk by each system; each restored image is
//!      compared byte for byte (by blake3) with the changed image;
//!   7. store sizes; the ratios of vdc to the best peer; the table.
//!
//! The page cache is dropped before each timed step (when allowed) and
//! steps that write end with a sync. Everything lives in a temporary
//! directory that is removed at the end.

pub mod image;
pub mod peers;
pub mod report;
pub mod vdc;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::Args;

use crate::BenchError;
use peers::Peer;
use report::{Figures, SystemRun};

/// Options of `vdc bench backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupBenchArgs {
    /// Size of the disk image, MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(16..=65536))]
    pub size_mib: u64,
    /// Share of the 4 MiB regions the change rewrites, percent.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// Peers to run, comma-separated: `restic`, `borg` (none: `--peers ''`).
    #[arg(long, default_value = "restic,borg", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// A 64 MiB image: a quick check that every step works (CI).
    #[arg(long)]
    pub smoke: bool,
    /// Directory for the image and the stores (default: the system's
    /// temporary directory); needs about 4× the image's size free.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(mut a: BackupBenchArgs, json: bool) -> Result<(), BenchError> {
    if a.smoke {
        a.size_mib = 64;
    }
    if !(a.change_percent > 0.0 && a.change_percent <= 100.0) {
        return Err(BenchError::Usage(
            "--change-percent must be above 0 and at most 100".into(),
        ));
    }
    let mut peers = Vec::new();
    for p in a.peers.iter().filter(|p| !p.is_empty()) {
        peers.push(match p.as_str() {
            "restic" => Peer::Restic,
            "borg" => Peer::Borg,
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown peer '{other}': choose restic, borg"
                )))
            }
        });
    }
    let figures = tokio::task::spawn_blocking(move || measure(&a, &peers))
        .await
        .map_err(|_| BenchError::Thread)??;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).map_err(|e| BenchError::Usage(e.to_string()))?
        );
    } else {
        print!("{}", report::table(&figures));
    }
    Ok(())
}

/// Runs `program args`, failing with the end of its error output.
pub(crate) fn run_checked(program: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BenchError::Spawn {
            program: program.into(),
            source: e,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::Command {
        program: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Flushes every file system's dirty pages.
pub(crate) fn sync() {
    nix::unistd::sync();
}

/// Syncs and drops the page cache; false when not allowed.
fn drop_caches() -> bool {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn hash_file(path: &Path) -> Result<blake3::Hash, BenchError> {
    let io = |e| BenchError::File {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        eprintln!("cannot remove {}: {e}", path.display());
    }
}

fn measure(a: &BackupBenchArgs, peers: &[Peer]) -> Result<Figures, BenchError> {
    let mut versions = Vec::new();
    for p in peers {
        versions.push(p.version()?);
    }
    let mut builder = tempfile::Builder::new();
    let tmp = builder.prefix("vdc-bench-backup-");
    let work = match &a.dir {
        Some(d) => tmp.tempdir_in(d),
        None => tmp.tempdir(),
    }
    .map_err(|e| BenchError::File {
        path: a.dir.clone().unwrap_or_else(std::env::temp_dir),
        source: e,
    })?;
    let w = work.path();
    let size = a.size_mib << 20;
    let img_dir = w.join("image");
    std::fs::create_dir_all(&img_dir).map_err(|e| BenchError::File {
        path: img_dir.clone(),
        source: e,
    })?;
    let raw = img_dir.join("disk.raw");
    let qcow2 = w.join("disk.qcow2");
    eprintln!("writing a {} MiB image…", a.size_mib);
    image::write_image(&raw, size)?;
    let full_bitmap = vdc::bitmap("full");
    vdc::make_disk(&raw, &qcow2, &full_bitmap)?;

    let cold = drop_caches();
    let t = Instant::now();
    hash_file(&raw)?;
    let raw_read_s = t.elapsed().as_secs_f64();

    // Full backups.
    let key_file = w.join("store.key");
    let mut master = [0u8; 32];
    image::Prng::new(size ^ 0x5eed).fill(&mut master);
    std::fs::write(&key_file, master).map_err(|e| BenchError::File {
        path: key_file.clone(),
        source: e,
    })?;
    let key = vdc_backup::key::StoreKey::read(&key_file)?;
    let store = vdc_backup::Store::open_or_init(&w.join("vdc-store"), Some(key))?;
    let socket = w.join("nbd.sock");
    drop_caches();
    eprintln!("vdc: full backup…");
    let full = vdc::backup(&store, &qcow2, &socket, None)?;
    let mut peer_full = Vec::new();
    for p in peers {
        let repo = w.join(format!("{}-repo", p.name()));
        p.init(&repo)?;
        drop_caches();
        eprintln!("{}: full backup…", p.name());
        peer_full.push(p.backup(&repo, &img_dir, "a")?);
    }

    // The change.
    let change = image::change_data(size, a.change_percent);
    image::apply_change(&raw, &change)?;
    vdc::write_change(&qcow2, w, &change)?;
    let want = hash_file(&raw)?;

    drop_caches();
    eprintln!("vdc: incremental backup…");
    let incr = vdc::backup(&store, &qcow2, &socket, Some((&full.index, &full_bitmap)))?;
    let mut peer_incr = Vec::new();
    for p in peers {
        let repo = w.join(format!("{}-repo", p.name()));
        drop_caches();
        eprintln!("{}: backup after the change…", p.name());
        peer_incr.push(p.backup(&repo, &img_dir, "b")?);
    }
    remove(&qcow2);

    // Restores.
    drop_caches();
    eprintln!("vdc: restore…");
    let out = w.join("vdc-restored.raw");
    let vdc_restore = vdc::restore(&store, &incr.index, size, &out)?;
    let vdc_ok = hash_file(&out)? == want;
    remove(&out);
    let mut runs = vec![SystemRun {
        system: "vdc".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        full_s: full.time.as_secs_f64(),
        incremental_s: incr.time.as_secs_f64(),
        restore_s: vdc_restore.as_secs_f64(),
        store_bytes: dir_bytes(store.root()),
        restored_ok: vdc_ok,
        incremental_chunks_read: Some(incr.chunks_read),
    }];
    for (i, p) in peers.iter().enumerate() {
        let repo = w.join(format!("{}-repo", p.name()));
        let into = w.join(format!("{}-restored", p.name()));
        drop_caches();
        eprintln!("{}: restore…", p.name());
        let (file, t) = p.restore(&repo, "b", &into)?;
        let ok = hash_file(&file)? == want;
        remove(&file);
        runs.push(SystemRun {
            system: p.name().into(),
            version: versions[i].clone(),
            full_s: peer_full[i].as_secs_f64(),
            incremental_s: peer_incr[i].as_secs_f64(),
            restore_s: t.as_secs_f64(),
            store_bytes: dir_bytes(&repo),
            restored_ok: ok,
            incremental_chunks_read: None,
        });
    }
    let peer_runs: Vec<&SystemRun> = runs[1..].iter().collect();
    let ratios = report::ratios(&runs[0], &peer_runs, size);
    Ok(Figures {
        image_bytes: size,
        changed_regions: change.len() as u64,
        cold_cache: cold,
        build: if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
        raw_read_s,
        systems: runs,
        ratios,
    })
}
