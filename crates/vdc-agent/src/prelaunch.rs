//! A failover start prepares QEMU while its supervisor waits for the lease.
//!
//! When this host already watches the VM's lease (a failover: the lease
//! belongs to a host that stopped, see `lease_watch`), the wait for the
//! lease is what is left of its TTL. QEMU's start-up (process, devices,
//! images) is done meanwhile, with the vCPUs stopped (`-S`): no guest code
//! runs and the guest does no I/O until the lease is this host's, and only
//! then does `cont` run the vCPUs. If the lease is refused (its holder is
//! alive), the prepared QEMU is killed before it ever ran.
//!
//! Opening the images before the lease is safe because QEMU locks them
//! (OFD locks on the image files): while the holder's QEMU still has them
//! open, the prepared QEMU fails to start (`Failed to get "write" lock`)
//! and the start simply launches QEMU after the lease, as any start does.

use std::time::Duration;

use vdc_types::{ApiError, VmConfig};

use crate::agent::{datastore_io, Agent, Layout};
use crate::error::host_error;
use crate::supervisor;

/// QEMU started with its vCPUs stopped, and the taps it uses.
pub(crate) struct Prepared {
    pub vm: vdc_qemu::Vm,
    pub taps: Vec<String>,
}

impl Prepared {
    /// Kills the prepared QEMU (it never ran the guest) and deletes its taps.
    pub(crate) async fn discard(self) {
        self.vm.kill();
        if !self.vm.wait_exit_for(Duration::from_secs(10)).await {
            tracing::warn!(
                pid = self.vm.pid(),
                "a prepared QEMU did not exit after SIGKILL"
            );
        }
        supervisor::cleanup_network(&self.taps).await;
    }
}

impl Agent {
    /// Creates the taps on their bridges; on failure the ones created are
    /// deleted again.
    pub(crate) async fn create_taps(
        &self,
        name: &str,
        taps: &[vdc_net::TapPort],
    ) -> Result<Vec<String>, ApiError> {
        let mut created = Vec::new();
        for port in taps {
            let tap = &port.tap;
            if let Err(e) = vdc_net::attach_port(port).await {
                supervisor::cleanup_network(&created).await;
                return Err(match e {
                    vdc_net::NetError::NoBridge(_) => ApiError::invalid(format!(
                        "cannot start VM '{name}': {}",
                        crate::error::chain(&e)
                    )),
                    _ => host_error(format!("cannot create tap device '{tap}'"), &e),
                });
            }
            created.push(tap.clone());
        }
        Ok(created)
    }

    /// Launches the VM's QEMU with its vCPUs stopped (see the module
    /// documentation); `None` (logged) when it cannot be prepared: a VM
    /// resumed from a state file, or its images still locked by the
    /// holder's QEMU.
    pub(crate) async fn launch_paused(
        &self,
        config: &VmConfig,
        layout: &Layout,
    ) -> Option<Prepared> {
        let state_file = layout.vm_dir.suspend_state();
        match datastore_io("cannot read the VM directory", move || state_file.exists()).await {
            Ok(false) => {}
            Ok(true) => return None,
            Err(e) => {
                tracing::info!(vm = %config.name, error = %e.message, "QEMU not prepared ahead of the lease");
                return None;
            }
        }
        let (taps, nics) = self.nic_plan(config).ok()?;
        let created = match self.create_taps(&config.name, &taps).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(vm = %config.name, error = %e.message, "QEMU not prepared ahead of the lease");
                return None;
            }
        };
        let mut spec = self.machine_spec(config, layout, nics, None);
        spec.paused = true;
        match vdc_qemu::Vm::launch(&spec, &layout.paths).await {
            Ok(vm) => {
                tracing::info!(vm = %config.name, pid = vm.pid(), "QEMU prepared with its vCPUs stopped while the lease is awaited");
                Some(Prepared { vm, taps: created })
            }
            Err(e) => {
                tracing::info!(vm = %config.name, error = %crate::error::chain(&e), "QEMU not prepared ahead of the lease; it starts once the lease is taken");
                supervisor::cleanup_network(&created).await;
                None
            }
        }
    }
}
