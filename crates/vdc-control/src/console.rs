//! A VM's serial console, through the agent of the host that has the VM.
//!
//! The control plane keeps no console data: reads and input are proxied to
//! the agent (which reads `console.log` and holds the console socket).
//!
//! - Read: the VM's recorded host if it is connected, else any connected
//!   host reaching the VM's datastore (the log lives in the VM directory, so
//!   a stopped VM's console stays readable).
//! - Input: only to a VM with a process, on the host running it; a stopped
//!   VM is a conflict (409), a VM on a silent host is `host_unavailable`.

use vdc_store::StoreExt;
use vdc_types::api::ConsoleInputRequest;
use vdc_types::{ApiError, ErrorCode, VmPowerState};

use crate::{store_err, Cluster, VmRecord};

/// Which part of the console log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRange {
    /// The last N bytes (0: nothing, only the end offset).
    Tail(u64),
    /// Everything from this offset on (the agent answers at most 1 MiB per
    /// read; an offset past the end means the log was replaced and reading
    /// restarts at 0).
    From(u64),
}

impl ConsoleRange {
    fn agent_query(self) -> String {
        match self {
            ConsoleRange::Tail(n) => format!("bytes={n}"),
            ConsoleRange::From(o) => format!("offset={o}"),
        }
    }
}

impl Cluster {
    async fn console_record(&self, name: &str) -> Result<VmRecord, ApiError> {
        self.store
            .get_json::<VmRecord>(&format!("/vms/{name}"))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("VM", name))
    }

    /// Bytes of a VM's serial console log and the log offset just past
    /// them (where the next [`ConsoleRange::From`] read should start).
    pub async fn vm_console_read(
        &self,
        name: &str,
        range: ConsoleRange,
    ) -> Result<(Vec<u8>, u64), ApiError> {
        let rec = self.console_record(name).await?;
        let (host, url) = self.host_for_files(&rec).await?;
        self.agents
            .console_read(&host, &url, &rec.config.id, &range.agent_query())
            .await
    }

    /// Types `req.data` on a running VM's serial console.
    pub async fn vm_console_input(
        &self,
        name: &str,
        req: &ConsoleInputRequest,
    ) -> Result<(), ApiError> {
        req.validate().map_err(ApiError::invalid)?;
        let rec = self.console_record(name).await?;
        if rec.state == VmPowerState::Unknown {
            return Err(ApiError::new(
                ErrorCode::HostUnavailable,
                format!(
                    "VM '{name}' is on host '{}', which stopped reporting; its console is unreachable",
                    rec.owner.as_deref().unwrap_or("-")
                ),
            ));
        }
        let host = match (&rec.owner, rec.state.has_process()) {
            (Some(h), true) => h.clone(),
            _ => {
                return Err(ApiError::invalid_state(format!(
                    "VM '{name}' is {}: its serial console takes input only while it runs; start it first ('vdc vm start {name}')",
                    rec.state
                )))
            }
        };
        let url = self.agent_url(&host).await?;
        self.agents
            .console_input(&host, &url, &rec.config.id, req)
            .await
    }
}
