//! `qemu-nbd` serving a stopped VM's image read-only on a unix socket
//! (optionally with a dirty bitmap as `qemu:dirty-bitmap:NAME`), for a
//! backup to read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vdc_types::{ApiError, ErrorCode};

use crate::backup::remove_logged;

/// Longest wait for `qemu-nbd` to listen.
const NBD_START: Duration = Duration::from_secs(20);

/// `qemu-nbd` serving one image read-only on a unix socket.
pub(crate) struct QemuNbd {
    child: tokio::process::Child,
    socket: PathBuf,
}

impl QemuNbd {
    pub(crate) async fn start(
        image: &Path,
        name: &str,
        bitmap: Option<&str>,
        socket: &Path,
    ) -> Result<QemuNbd, ApiError> {
        remove_logged(socket);
        let mut cmd = tokio::process::Command::new("qemu-nbd");
        if let Some(b) = bitmap {
            cmd.arg("--bitmap").arg(b);
        }
        let child = cmd
            .arg("--read-only")
            .arg("--format=qcow2")
            .arg("--shared=2")
            .arg(format!("--export-name={name}"))
            .arg("--socket")
            .arg(socket)
            .arg(image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ApiError::new(ErrorCode::HostError, format!("cannot run qemu-nbd: {e}"))
            })?;
        let mut server = QemuNbd {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = tokio::time::Instant::now() + NBD_START;
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    if let Err(e) = e.read_to_string(&mut err).await {
                        tracing::debug!(error = %e, "qemu-nbd stderr");
                    }
                }
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "qemu-nbd ended ({status}) before serving '{}': {}",
                        image.display(),
                        err.trim()
                    ),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                server.stop().await;
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    "qemu-nbd did not start serving in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(error = %e, "qemu-nbd kill");
        }
        if let Err(e) = self.child.wait().await {
            tracing::debug!(error = %e, "qemu-nbd wait");
        }
        remove_logged(&self.socket);
    }
}
