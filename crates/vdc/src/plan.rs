//! `vdc plan …`: recovery plans (create from flags or a JSON/TOML file,
//! list, show, delete), their operations (test, cleanup, migrate,
//! failover, reprotect, failback), runs, prompts and reports.

use std::time::Duration;

use clap::Subcommand;
use vdc_dr::plan::{NetworkMapping, PlanGroup, PlanStep, PlanVm, ReadyWait, PLAN_VERSION};
use vdc_dr::{Operation, Plan, PlanState, Run, RunState};

use crate::commands::{out, out_json, word, Ctx};
use crate::error::CliError;
use crate::format::{duration_ms, or_dash, utc_time, Table};

/// Longest wait for a run to end.
const RUN_WAIT: Duration = Duration::from_secs(3 * 3600);

/// `vdc plan ...`
#[derive(Debug, Subcommand)]
pub enum PlanCmd {
    /// Create a recovery plan at this (the recovery) site, from flags or
    /// from a file.
    Create(Box<CreateArgs>),
    /// List the plans.
    #[command(alias = "ls")]
    List,
    /// Show a plan: its groups, mappings, steps and state.
    Show {
        /// Plan name.
        name: String,
    },
    /// Delete a plan (its runs stay).
    Delete {
        /// Plan name.
        name: String,
    },
    /// Test: recover the latest points as clones (NAME-test) into an
    /// isolated network; production and replication go on untouched.
    Test(OpArgs),
    /// Remove a test's clones and isolated network.
    Cleanup(OpArgs),
    /// Planned migration: final sync, clean shutdown, recover with no loss.
    Migrate(OpArgs),
    /// Disaster failover: recover the latest points (the protected site
    /// may be gone).
    Failover(OpArgs),
    /// Replicate the recovered VMs back and swap the plan's direction.
    Reprotect(OpArgs),
    /// Planned migration back to the original site.
    Failback(OpArgs),
    /// Let a run waiting at a prompt go on.
    Continue {
        /// Run id.
        run: String,
    },
    /// List runs, newest first.
    Runs {
        /// Only of this plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// A run's report: steps with times, the RTO and each VM's RPO.
    Report {
        /// Run id.
        run: String,
    },
}

/// An operation's arguments.
#[derive(Debug, clap::Args)]
pub struct OpArgs {
    /// Plan name.
    pub name: String,
    /// Return once the run started instead of waiting for its end.
    #[arg(long)]
    pub no_wait: bool,
}

/// `vdc plan create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Plan name (taken from the file when --file is given and this is
    /// omitted).
    pub name: Option<String>,
    /// The plan as JSON or TOML (by extension: .json, .toml).
    #[arg(long, conflicts_with_all = ["site", "group", "map"])]
    pub file: Option<std::path::PathBuf>,
    /// The protected site.
    #[arg(long)]
    pub site: Option<String>,
    /// A priority group: its VMs, comma-separated (repeat, in order).
    #[arg(long, value_name = "VM,VM")]
    pub group: Vec<String>,
    /// Network mapping PROTECTED=RECOVERY[:TEST] (repeat).
    #[arg(long, value_name = "PROT=REC[:TEST]")]
    pub map: Vec<String>,
    /// A VM's readiness wait VM=guest[:SECS] | tcp:PORT[:SECS] |
    /// delay:SECS | running (default guest:300).
    #[arg(long, value_name = "VM=WAIT")]
    pub wait: Vec<String>,
    /// A VM's new address at the recovery site VM=A.B.C.D/N.
    #[arg(long, value_name = "VM=A/N")]
    pub ip: Vec<String>,
    /// A VM's new hostname at the recovery site VM=NAME.
    #[arg(long, value_name = "VM=NAME")]
    pub hostname: Vec<String>,
    /// A step before the first group: cmd:SECS:COMMAND | wait:SECS |
    /// prompt:MESSAGE; prefixed by N@ for a step of group N (repeat).
    #[arg(long, value_name = "[N@]STEP")]
    pub pre: Vec<String>,
    /// A step after the last group (same forms as --pre).
    #[arg(long, value_name = "[N@]STEP")]
    pub post: Vec<String>,
}

/// Runs `vdc plan …`.
pub(crate) async fn plan(ctx: &Ctx, cmd: PlanCmd) -> Result<(), CliError> {
    let op = |a: OpArgs, o: Operation| (a, o);
    let (args, operation) = match cmd {
        PlanCmd::Create(a) => {
            let p = ctx.client.create_plan(&plan_from_args(*a)?).await?;
            if ctx.json() {
                return out_json(&p);
            }
            return out(&show(&p));
        }
        PlanCmd::List => {
            let plans = ctx.client.list_plans().await?;
            if ctx.json() {
                return out_json(&plans);
            }
            return out(&plan_table(&plans));
        }
        PlanCmd::Show { name } => {
            let p = ctx.client.get_plan(&name).await?;
            if ctx.json() {
                return out_json(&p);
            }
            return out(&show(&p));
        }
        PlanCmd::Delete { name } => {
            ctx.client.delete_plan(&name).await?;
            return out(&format!("plan {name} deleted\n"));
        }
        PlanCmd::Continue { run } => {
            let r = ctx.client.continue_dr_run(&run).await?;
            return out(&format!("run {} goes on past its prompt\n", r.id));
        }
        PlanCmd::Runs { plan } => {
            let runs = ctx.client.list_dr_runs(plan.as_deref()).await?;
            if ctx.json() {
                return out_json(&runs);
            }
            return out(&run_table(&runs));
        }
        PlanCmd::Report { run } => {
            let r = ctx.client.get_dr_run(&run).await?;
            if ctx.json() {
                return out_json(&r);
            }
            return out(&vdc_dr::report::text(&r));
        }
        PlanCmd::Test(a) => op(a, Operation::Test),
        PlanCmd::Cleanup(a) => op(a, Operation::Cleanup),
        PlanCmd::Migrate(a) => op(a, Operation::Migrate),
        PlanCmd::Failover(a) => op(a, Operation::Failover),
        PlanCmd::Reprotect(a) => op(a, Operation::Reprotect),
        PlanCmd::Failback(a) => op(a, Operation::Failback),
    };
    let run = ctx.client.run_plan(&args.name, operation.word()).await?;
    if args.no_wait {
        if ctx.json() {
            return out_json(&run);
        }
        return out(&format!(
            "run {} ({} of plan {}) started; follow it with 'vdc plan report {}'\n",
            run.id,
            operation.word(),
            args.name,
            run.id
        ));
    }
    let end = wait_run(ctx, &run.id).await?;
    if ctx.json() {
        out_json(&end)?;
    } else {
        out(&vdc_dr::report::text(&end))?;
    }
    if end.state == RunState::Failed {
        return Err(CliError::Usage(format!(
            "run {} failed: {}",
            end.id,
            end.errors.join("; ")
        )));
    }
    Ok(())
}

/// Polls a run until it ends, telling once when it waits at a prompt.
async fn wait_run(ctx: &Ctx, id: &str) -> Result<Run, CliError> {
    let deadline = tokio::time::Instant::now() + RUN_WAIT;
    let mut told = false;
    loop {
        let r = ctx.client.get_dr_run(id).await?;
        match r.state {
            RunState::Succeeded | RunState::Failed => return Ok(r),
            RunState::Waiting if !told => {
                told = true;
                eprintln!(
                    "run {id} waits: {} — run 'vdc plan continue {id}' to go on",
                    r.prompt.as_deref().unwrap_or("")
                );
            }
            RunState::Running => told = false,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Interrupted(r.task));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The plan the flags (or the file) describe.
pub fn plan_from_args(a: CreateArgs) -> Result<Plan, CliError> {
    let usage = CliError::Usage;
    if let Some(path) = &a.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let mut v: serde_json::Value = if is_toml {
            toml::from_str(&text)
                .map_err(|e| usage(format!("{} is not a valid plan: {e}", path.display())))?
        } else {
            serde_json::from_str(&text)
                .map_err(|e| usage(format!("{} is not a valid plan: {e}", path.display())))?
        };
        if let Some(n) = a.name {
            v["name"] = serde_json::Value::String(n);
        }
        return serde_json::from_value(v)
            .map_err(|e| usage(format!("{} is not a valid plan: {e}", path.display())));
    }
    let name = a.name.ok_or_else(|| {
        usage("name the plan: vdc plan create NAME --site SITE --group VM,…".into())
    })?;
    let site = a
        .site
        .ok_or_else(|| usage("name the protected site with --site SITE".into()))?;
    let mut groups: Vec<PlanGroup> = a
        .group
        .iter()
        .map(|g| PlanGroup {
            vms: g
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|n| PlanVm {
                    name: n.to_string(),
                    wait: ReadyWait::default(),
                    ip: None,
                    hostname: None,
                })
                .collect(),
            pre_steps: vec![],
            post_steps: vec![],
        })
        .collect();
    let vm_value = |spec: &str, what: &str| -> Result<(String, String), CliError> {
        let (vm, v) = spec
            .split_once('=')
            .ok_or_else(|| usage(format!("--{what} takes VM=VALUE, not '{spec}'")))?;
        Ok((vm.to_string(), v.to_string()))
    };
    let mut edits = Vec::new();
    for s in &a.wait {
        let (vm, v) = vm_value(s, "wait")?;
        edits.push((vm, Edit::Wait(parse_wait(&v).map_err(usage)?)));
    }
    for s in &a.ip {
        let (vm, v) = vm_value(s, "ip")?;
        edits.push((vm, Edit::Ip(v)));
    }
    for s in &a.hostname {
        let (vm, v) = vm_value(s, "hostname")?;
        edits.push((vm, Edit::Hostname(v)));
    }
    for (vm, e) in edits {
        let v = groups
            .iter_mut()
            .flat_map(|g| g.vms.iter_mut())
            .find(|v| v.name == vm)
            .ok_or_else(|| usage(format!("VM '{vm}' is in no --group")))?;
        match e {
            Edit::Wait(w) => v.wait = w,
            Edit::Ip(i) => v.ip = Some(i),
            Edit::Hostname(h) => v.hostname = Some(h),
        }
    }
    let mut pre_steps = Vec::new();
    let mut post_steps = Vec::new();
    for (specs, post) in [(&a.pre, false), (&a.post, true)] {
        for s in specs {
            let (group, step) = parse_step(s).map_err(usage)?;
            let list = match group {
                None if post => &mut post_steps,
                None => &mut pre_steps,
                Some(n) => {
                    let g = groups.get_mut(n.wrapping_sub(1)).ok_or_else(|| {
                        usage(format!(
                            "step '{s}' names group {n}; the plan has {} group(s)",
                            a.group.len()
                        ))
                    })?;
                    if post {
                        &mut g.post_steps
                    } else {
                        &mut g.pre_steps
                    }
                }
            };
            list.push(step);
        }
    }
    let networks = a
        .map
        .iter()
        .map(|m| parse_map(m).map_err(usage))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        version: PLAN_VERSION,
        name,
        protected_site: site,
        recovery_site: String::new(),
        groups,
        networks,
        pre_steps,
        post_steps,
        created_ms: 0,
        reprotects: 0,
        state: PlanState::Ready,
        active_run: None,
        last_run: None,
    })
}

enum Edit {
    Wait(ReadyWait),
    Ip(String),
    Hostname(String),
}

fn secs(s: &str, what: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("{what}: '{s}' is not a number of seconds"))
}

/// `guest[:SECS]`, `tcp:PORT[:SECS]`, `delay:SECS` or `running`.
pub fn parse_wait(s: &str) -> Result<ReadyWait, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        ["guest"] => Ok(ReadyWait::default()),
        ["guest", t] => Ok(ReadyWait::Guest {
            timeout_s: secs(t, "guest wait")?,
        }),
        ["tcp", p] | ["tcp", p, _] => Ok(ReadyWait::Tcp {
            port: p
                .parse()
                .map_err(|_| format!("tcp wait: '{p}' is not a port"))?,
            timeout_s: match parts.get(2) {
                Some(t) => secs(t, "tcp wait")?,
                None => vdc_dr::plan::DEFAULT_READY_TIMEOUT_S,
            },
        }),
        ["delay", t] => Ok(ReadyWait::Delay {
            seconds: secs(t, "delay")?,
        }),
        ["running"] => Ok(ReadyWait::Running),
        _ => Err(format!(
            "wait '{s}' is not guest[:SECS], tcp:PORT[:SECS], delay:SECS or running"
        )),
    }
}

/// `[N@]cmd:SECS:COMMAND`, `[N@]wait:SECS` or `[N@]prompt:MESSAGE`.
pub fn parse_step(s: &str) -> Result<(Option<usize>, PlanStep), String> {
    let (group, rest) = match s.split_once('@') {
        Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            (Some(n.parse::<usize>().map_err(|e| e.to_string())?), rest)
        }
        _ => (None, s),
    };
    let step = match rest.split_once(':') {
        Some(("cmd", r)) => {
            let (t, c) = r
                .split_once(':')
                .ok_or_else(|| format!("step '{s}': cmd takes cmd:SECS:COMMAND"))?;
            PlanStep::Command {
                command: c.to_string(),
                timeout_s: secs(t, "cmd timeout")?,
            }
        }
        Some(("wait", t)) => PlanStep::Wait {
            seconds: secs(t, "wait")?,
        },
        Some(("prompt", m)) => PlanStep::Prompt {
            message: m.to_string(),
        },
        _ => {
            return Err(format!(
                "step '{s}' is not cmd:SECS:COMMAND, wait:SECS or prompt:MESSAGE (prefix N@ for group N)"
            ))
        }
    };
    Ok((group, step))
}

/// `PROTECTED=RECOVERY[:TEST]`.
pub fn parse_map(s: &str) -> Result<NetworkMapping, String> {
    let (p, r) = s
        .split_once('=')
        .ok_or_else(|| format!("--map takes PROTECTED=RECOVERY[:TEST], not '{s}'"))?;
    let (r, t) = match r.split_once(':') {
        Some((r, t)) => (r, Some(t.to_string())),
        None => (r, None),
    };
    Ok(NetworkMapping {
        protected: p.to_string(),
        recovery: r.to_string(),
        test: t,
    })
}

/// Plans as a table.
pub fn plan_table(plans: &[Plan]) -> String {
    let mut t = Table::new(&[
        "PLAN",
        "PROTECTS",
        "RECOVERS-TO",
        "GROUPS",
        "VMS",
        "STATE",
        "LAST-RUN",
    ]);
    for p in plans {
        t.row(vec![
            p.name.clone(),
            p.protected_site.clone(),
            p.recovery_site.clone(),
            p.groups.len().to_string(),
            vdc_dr::plan::vms(p).count().to_string(),
            word(&p.state),
            or_dash(p.last_run.as_deref()),
        ]);
    }
    t.render()
}

/// One plan, readable.
pub fn show(p: &Plan) -> String {
    let mut s = format!(
        "plan {}: protects site {}, recovers to site {}; {}\n",
        p.name,
        p.protected_site,
        p.recovery_site,
        word(&p.state)
    );
    for (i, g) in p.groups.iter().enumerate() {
        let vms: Vec<String> = g
            .vms
            .iter()
            .map(|v| {
                let mut x = format!("{} (wait {})", v.name, wait_word(&v.wait));
                if let Some(ip) = &v.ip {
                    x += &format!(" ip {ip}");
                }
                if let Some(h) = &v.hostname {
                    x += &format!(" hostname {h}");
                }
                x
            })
            .collect();
        s += &format!("  group {}: {}\n", i + 1, vms.join(", "));
        for st in &g.pre_steps {
            s += &format!("    pre: {}\n", step_word(st));
        }
        for st in &g.post_steps {
            s += &format!("    post: {}\n", step_word(st));
        }
    }
    for m in &p.networks {
        s += &format!(
            "  network {} → {} (test: {})\n",
            m.protected,
            m.recovery,
            vdc_dr::plan::test_network(&p.name, m)
        );
    }
    for st in &p.pre_steps {
        s += &format!("  plan pre: {}\n", step_word(st));
    }
    for st in &p.post_steps {
        s += &format!("  plan post: {}\n", step_word(st));
    }
    s
}

fn wait_word(w: &ReadyWait) -> String {
    match w {
        ReadyWait::Guest { timeout_s } => format!("guest ready ≤{timeout_s}s"),
        ReadyWait::Tcp { port, timeout_s } => format!("tcp {port} ≤{timeout_s}s"),
        ReadyWait::Delay { seconds } => format!("{seconds}s"),
        ReadyWait::Running => "running".into(),
    }
}

fn step_word(s: &PlanStep) -> String {
    match s {
        PlanStep::Command { command, timeout_s } => format!("run `{command}` (≤{timeout_s}s)"),
        PlanStep::Wait { seconds } => format!("wait {seconds}s"),
        PlanStep::Prompt { message } => format!("prompt \"{message}\""),
    }
}

/// Runs as a table.
pub fn run_table(runs: &[Run]) -> String {
    let mut t = Table::new(&[
        "RUN",
        "PLAN",
        "OPERATION",
        "STATE",
        "STARTED",
        "RTO",
        "WORST-RPO",
    ]);
    for r in runs {
        t.row(vec![
            r.id.clone(),
            r.plan.clone(),
            r.operation.word().to_string(),
            word(&r.state),
            utc_time(r.started_ms),
            r.rto_ms.map(duration_ms).unwrap_or_else(|| "-".into()),
            r.vms
                .iter()
                .filter_map(|v| v.rpo_ms)
                .max()
                .map(duration_ms)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_wait_and_map_forms_parse() {
        assert_eq!(
            parse_step("2@cmd:30:echo a:b").unwrap(),
            (
                Some(2),
                PlanStep::Command {
                    command: "echo a:b".into(),
                    timeout_s: 30
                }
            )
        );
        assert_eq!(
            parse_step("prompt:check the db").unwrap(),
            (
                None,
                PlanStep::Prompt {
                    message: "check the db".into()
                }
            )
        );
        assert!(parse_step("sleep:3").is_err());
        assert_eq!(
            parse_wait("tcp:22:60").unwrap(),
            ReadyWait::Tcp {
                port: 22,
                timeout_s: 60
            }
        );
        assert_eq!(parse_wait("running").unwrap(), ReadyWait::Running);
        assert!(parse_wait("tcp:x").is_err());
        let m = parse_map("prod=dr:bubble").unwrap();
        assert_eq!(
            (m.protected.as_str(), m.recovery.as_str(), m.test.as_deref()),
            ("prod", "dr", Some("bubble"))
        );
        assert!(parse_map("prod").is_err());
    }
}
