//! `vdc vm snapshot create|list|revert|delete`.

use clap::{Args, Subcommand};
use vdc_types::now_ms;
use vdc_types::snapshot::{Consistency, CreateSnapshotRequest, SnapshotList};

use crate::cli::WaitArgs;
use crate::commands::{out, out_json, print_started, Ctx};
use crate::error::CliError;
use crate::format::{age, Table};
use crate::wait::wait_task;

/// `vdc vm snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot of a VM's disks (and with --memory, of its memory).
    Create {
        /// VM name.
        vm: String,
        /// Snapshot name.
        name: String,
        /// Save the running VM's memory too: a revert brings it back
        /// running exactly as it was.
        #[arg(long)]
        memory: bool,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a VM's snapshot tree and where the VM is in it.
    #[command(alias = "ls")]
    List {
        /// VM name.
        vm: String,
    },
    /// Revert a VM to a snapshot: powered off after a disk-only snapshot,
    /// running as it was after one with memory.
    Revert {
        /// VM name.
        vm: String,
        /// Snapshot name.
        name: String,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a snapshot (any in the tree); its data merges into the images
    /// that depend on it while the VM runs.
    #[command(alias = "rm")]
    Delete {
        /// VM name.
        vm: String,
        /// Snapshot name.
        name: String,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `vdc vm instant-clone SRC NEW`, `vdc vm clone-running SRC NEW`.
#[derive(Debug, Args)]
pub struct InstantCloneArgs {
    /// The running VM to fork.
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc vm clone-running SRC NEW [--linked|--full]`.
#[derive(Debug, Args)]
pub struct RunningCloneArgs {
    /// The running VM to clone.
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// An overlay on the source's frozen image (kept as snapshot
    /// clone-NEW while the clone exists).
    #[arg(long, conflicts_with = "full")]
    pub linked: bool,
    /// A whole copy, independent of the source (the default).
    #[arg(long)]
    pub full: bool,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Clones a running VM; the clone boots with its own identity.
pub(crate) async fn clone_running(ctx: &Ctx, a: RunningCloneArgs) -> Result<(), CliError> {
    let task = ctx
        .client
        .clone_running(&a.source, &a.name, a.linked)
        .await?;
    crate::vm_commands::wait_and_show_vm(ctx, &task, &a.name, &a.wait).await
}

/// Forks a running VM into a new running VM with its own identity, then
/// prints the clone.
pub(crate) async fn instant_clone(ctx: &Ctx, a: InstantCloneArgs) -> Result<(), CliError> {
    let task = ctx.client.instant_clone(&a.source, &a.name).await?;
    crate::vm_commands::wait_and_show_vm(ctx, &task, &a.name, &a.wait).await
}

/// Runs a snapshot command.
pub(crate) async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<(), CliError> {
    let (vm, task, wait, done) = match cmd {
        SnapshotCmd::List { vm } => {
            let list = ctx.client.list_snapshots(&vm).await?;
            return if ctx.json() {
                out_json(&list)
            } else {
                out(&render_tree(&list, now_ms()))
            };
        }
        SnapshotCmd::Create {
            vm,
            name,
            memory,
            description,
            wait,
        } => {
            let req = CreateSnapshotRequest {
                name: name.clone(),
                description,
                memory,
            };
            let task = ctx.client.create_snapshot(&vm, &req).await?;
            (vm, task, wait, format!("snapshot {name} taken"))
        }
        SnapshotCmd::Revert { vm, name, wait } => {
            let task = ctx.client.revert_snapshot(&vm, &name).await?;
            (vm, task, wait, format!("reverted to snapshot {name}"))
        }
        SnapshotCmd::Delete { vm, name, wait } => {
            let task = ctx.client.delete_snapshot(&vm, &name).await?;
            (vm, task, wait, format!("snapshot {name} deleted"))
        }
    };
    if wait.no_wait {
        return print_started(ctx, &task);
    }
    let ended = wait_task(&ctx.client, &task, wait.timeout()).await?;
    if ctx.json() {
        return out_json(&ended);
    }
    let list = ctx.client.list_snapshots(&vm).await?;
    out(&format!(
        "vm {vm}: {done}\n{}",
        render_tree(&list, now_ms())
    ))
}

/// The tree as an indented table, `*` marking the current snapshot (the
/// VM's present state descends from it: "you are here").
pub(crate) fn render_tree(list: &SnapshotList, now: u64) -> String {
    let mut t = Table::new(&[
        "SNAPSHOT",
        "CREATED",
        "MEMORY",
        "CONSISTENCY",
        "DESCRIPTION",
    ]);
    fn walk(list: &SnapshotList, parent: Option<&str>, depth: usize, t: &mut Table, now: u64) {
        for s in list
            .snapshots
            .iter()
            .filter(|s| s.parent.as_deref() == parent)
        {
            let here = if list.current.as_deref() == Some(s.name.as_str()) {
                " *"
            } else {
                ""
            };
            t.row(vec![
                format!("{}{}{here}", "  ".repeat(depth), s.name),
                age(s.created_ms, now),
                if s.memory { "yes" } else { "no" }.to_string(),
                match s.consistency {
                    Consistency::Quiesced => "quiesced".to_string(),
                    Consistency::CrashConsistent => "crash-consistent".to_string(),
                },
                s.description.clone(),
            ]);
            walk(list, Some(&s.name), depth + 1, t, now);
        }
    }
    walk(list, None, 0, &mut t, now);
    let mut s = if list.snapshots.is_empty() {
        format!("VM {} has no snapshots\n", list.vm)
    } else {
        t.render()
    };
    s.push_str(&format!(
        "current: {} (* above); disk chain {} of at most {} images\n",
        list.current.as_deref().unwrap_or("none"),
        list.chain_length,
        list.max_chain_length
    ));
    if let Some(w) = &list.warning {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::snapshot::Snapshot;

    fn snap(name: &str, parent: Option<&str>) -> Snapshot {
        Snapshot {
            name: name.into(),
            description: String::new(),
            created_ms: 0,
            consistency: Consistency::Quiesced,
            quiesce_note: None,
            memory: false,
            running: true,
            parent: parent.map(str::to_string),
            images: Default::default(),
            state_file: None,
            clones: Vec::new(),
        }
    }

    #[test]
    fn the_tree_is_indented_and_marks_the_current_snapshot() {
        let list = SnapshotList {
            vm: "web".into(),
            snapshots: vec![snap("a", None), snap("b", Some("a")), snap("c", Some("a"))],
            current: Some("c".into()),
            chain_length: 3,
            max_chain_length: 16,
            warning: None,
        };
        let text = render_tree(&list, 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("a "), "{text}");
        assert!(lines[2].starts_with("  b "), "{text}");
        assert!(lines[3].starts_with("  c *"), "{text}");
        assert!(text.contains("current: c"));
    }
}
