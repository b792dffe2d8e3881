//! The peers of `vdc bench backup`: restic and borg (Debian packages), run
//! with the recipes their users follow: `restic init`, `restic backup
//! disk.raw`, `restic restore latest`; `borg init --encryption=repokey`,
//! `borg create --compression zstd,3`, `borg extract`. Both back up the
//! same file path (`disk.raw`), first the image, then the same image after
//! the change, so each sees the file change as it would on a real host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::BenchError;

/// A file-oriented backup tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// restic.
    Restic,
    /// borg.
    Borg,
}

/// The passphrase of the peers' throwaway repositories.
const PASSWORD: &str = "vdc-bench";

impl Peer {
    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Restic => "restic",
            Peer::Borg => "borg",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Peer::Restic => "restic",
            Peer::Borg => "borg",
        }
    }

    /// Its version line (also checks it is installed).
    pub fn version(self) -> Result<String, BenchError> {
        let out = match self {
            Peer::Restic => self.run(&["version"], None, None)?,
            Peer::Borg => self.run(&["--version"], None, None)?,
        };
        Ok(out.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }

    fn run(
        &self,
        args: &[&str],
        cwd: Option<&Path>,
        repo: Option<&Path>,
    ) -> Result<String, BenchError> {
        let mut cmd = Command::new(self.program());
        cmd.args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("BORG_PASSPHRASE", PASSWORD)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
        if let Some(r) = repo {
            cmd.env("RESTIC_REPOSITORY", r);
            cmd.env("BORG_REPO", r);
            cmd.env("RESTIC_CACHE_DIR", r.with_extension("cache"));
            cmd.env("BORG_CACHE_DIR", r.with_extension("cache"));
            cmd.env("BORG_CONFIG_DIR", r.with_extension("config"));
            cmd.env("BORG_SECURITY_DIR", r.with_extension("security"));
        }
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let out = cmd.output().map_err(|e| BenchError::Spawn {
            program: format!(
                "{} (install it: scripts/setup.sh --deps-only --test-deps)",
                self.program()
            ),
            source: e,
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(BenchError::Command {
                program: format!("{} {}", self.program(), args.join(" ")),
                stderr: tail,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Makes the repository `repo`.
    pub fn init(self, repo: &Path) -> Result<(), BenchError> {
        match self {
            Peer::Restic => self.run(&["init"], None, Some(repo)),
            Peer::Borg => self.run(&["init", "--encryption=repokey"], None, Some(repo)),
        }
        .map(|_| ())
    }

    /// Backs up `dir/disk.raw` as archive `name`.
    pub fn backup(self, repo: &Path, dir: &Path, name: &str) -> Result<Duration, BenchError> {
        let t = Instant::now();
        match self {
            Peer::Restic => self.run(
                &["backup", "--host", "peer", "disk.raw"],
                Some(dir),
                Some(repo),
            ),
            Peer::Borg => self.run(
                &[
                    "create",
                    "--compression",
                    "zstd,3",
                    &format!("::{name}"),
                    "disk.raw",
                ],
                Some(dir),
                Some(repo),
            ),
        }?;
        Ok(t.elapsed())
    }

    /// Restores archive `name` (restic: the latest) into `into`; returns
    /// the restored file and the time, final sync included.
    pub fn restore(
        self,
        repo: &Path,
        name: &str,
        into: &Path,
    ) -> Result<(PathBuf, Duration), BenchError> {
        std::fs::create_dir_all(into).map_err(|e| BenchError::File {
            path: into.to_path_buf(),
            source: e,
        })?;
        let t = Instant::now();
        match self {
            Peer::Restic => self.run(
                &["restore", "latest", "--target", &into.to_string_lossy()],
                None,
                Some(repo),
            ),
            Peer::Borg => self.run(&["extract", &format!("::{name}")], Some(into), Some(repo)),
        }?;
        super::sync();
        Ok((into.join("disk.raw"), t.elapsed()))
    }
}
