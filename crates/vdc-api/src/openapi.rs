//! The OpenAPI document of the REST API, generated from the handlers in
//! [`crate::routes`] and the types of `vdc_types`, plus what holds for
//! every operation (the bearer token, 401 and 500).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use vdc_types::agent::HostReport;
use vdc_types::api::{
    ConsoleInputRequest, CreateTemplateRequest, CreateVmRequest, DiskRequest, ShutdownVmRequest,
    StartVmRequest, Template, VersionInfo,
};
use vdc_types::auth::{AddHostRequest, HostCredential, HostJoin, JoinRequest, JoinResponse};
use vdc_types::migration::{
    DiskMirrorProgress, MigrateRequest, MigrationKind, MigrationOutcome, MigrationProgress,
    MigrationReport,
};
use vdc_types::{
    ApiError, Datastore, ErrorCode, Event, Host, InFlight, Network, Task, Vm, VmAction, VmOperation,
};

use crate::backup::BackupPaths;
use crate::control_plane::ControlPlanePaths;
use crate::dr::DrPaths;
use crate::join;
use crate::routes::*;
use crate::sites::SitesPaths;
use crate::{events, ha, maintenance, migration, templates_vm};

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vdc API",
        description = "Virtual datacenter with business continuity built in"
    ),
    paths(
        version,
        list_hosts,
        ha::ha_status,
        ha::set_ha_policy,
        ha::list_ha_groups,
        ha::create_ha_group,
        ha::get_ha_group,
        ha::update_ha_group,
        ha::delete_ha_group,
        ha::list_alarms,
        ha::ack_alarm,
        crate::cpu_baseline::get_cpu_baseline,
        crate::tls::get_settings,
        crate::tls::set_settings,
        get_host,
        list_datastores,
        list_networks,
        create_network,
        get_network,
        delete_network,
        crate::switches::list_switches,
        crate::switches::create_switch,
        crate::switches::get_switch,
        crate::switches::delete_switch,
        crate::nics::add_nic,
        crate::nics::remove_nic,
        list_templates,
        create_template,
        list_vms,
        create_vm,
        get_vm,
        ha::update_vm,
        delete_vm,
        start_vm,
        shutdown_vm,
        migration::migrate_vm,
        vm_action,
        vm_console,
        vm_console_input,
        list_tasks,
        get_task,
        cancel_task,
        events::list_events,
        events::stream_events,
        join::agent_report,
        join::agent_join,
        join::add_host,
        join::list_agents,
        maintenance::enter_maintenance,
        maintenance::exit_maintenance,
        templates_vm::clone_vm,
        templates_vm::vm_to_template,
        templates_vm::get_template,
        templates_vm::delete_template,
        templates_vm::import_disk,
        templates_vm::export_vm,
        templates_vm::import_ova,
        crate::snapshots::list_snapshots,
        crate::snapshots::create_snapshot,
        crate::snapshots::revert_snapshot,
        crate::snapshots::delete_snapshot,
        crate::snapshots::instant_clone,
        crate::snapshots::clone_running
    ),
    components(schemas(
        VersionInfo,
        vdc_types::ha::HaStatus,
        vdc_types::CpuBaseline,
        vdc_types::HostCpuFit,
        vdc_types::host::HostCpuBaseline,
        vdc_types::ha::HaHost,
        vdc_types::ha::HaHostState,
        vdc_types::ha::HaPriority,
        vdc_types::ha::IsolationResponse,
        vdc_types::ha::VmHa,
        vdc_types::ha::UpdateVmRequest,
        vdc_types::ha::HaPolicy,
        vdc_types::ha::SetHaPolicyRequest,
        vdc_types::ha_group::HaGroup,
        vdc_types::ha_group::CreateHaGroupRequest,
        vdc_types::ha_group::UpdateHaGroupRequest,
        vdc_types::ha_group::HaGroupName,
        vdc_types::ha_group::Alarm,
        vdc_types::ha_group::AlarmSeverity,
        Host,
        vdc_types::MaintenanceState,
        Datastore,
        Network,
        vdc_types::switch::Switch,
        vdc_types::switch::SwitchKind,
        vdc_types::switch::SwitchView,
        vdc_types::switch::HostRealization,
        vdc_types::switch::HostSwitchState,
        vdc_types::switch::RealizationState,
        vdc_types::switch::UplinkState,
        vdc_types::switch::DesiredSwitch,
        vdc_types::switch::ReportAnswer,
        Template,
        Vm,
        VmAction,
        VmOperation,
        InFlight,
        Task,
        Event,
        ApiError,
        ErrorCode,
        CreateVmRequest,
        DiskRequest,
        CreateTemplateRequest,
        StartVmRequest,
        ShutdownVmRequest,
        MigrateRequest,
        MigrationKind,
        MigrationProgress,
        DiskMirrorProgress,
        MigrationOutcome,
        MigrationReport,
        ConsoleInputRequest,
        HostReport,
        vdc_types::agent::QemuModelsReport,
        VmActionName,
        AddHostRequest,
        HostCredential,
        HostJoin,
        JoinRequest,
        JoinResponse,
        vdc_types::auth::HostTlsBundle,
        vdc_types::auth::HostCertificate,
        vdc_types::migration::MigrationEncryption,
        vdc_types::migration::MigrationSettingsView,
        vdc_types::migration::SetMigrationSettingsRequest,
        vdc_types::migration::CaSummary,
        vdc_types::migration::HostTlsStatus,
        vdc_types::clone::CloneVmRequest,
        vdc_types::clone::VmToTemplateRequest,
        vdc_types::clone::TemplateDetails,
        vdc_types::clone::ImportDiskRequest,
        vdc_types::ova::ExportVmRequest,
        vdc_types::ova::ImportOvaRequest,
        vdc_types::ova::ImportOvaResponse,
        vdc_types::snapshot::SnapshotList,
        vdc_types::nic::AddNicRequest,
        vdc_types::nic::NicChange,
        vdc_types::snapshot::Snapshot,
        vdc_types::snapshot::Consistency,
        vdc_types::snapshot::CreateSnapshotRequest,
        vdc_types::snapshot::InstantCloneRequest,
        vdc_types::snapshot::RunningCloneRequest
    )),
    modifiers(&BackupPaths, &ControlPlanePaths, &DrPaths, &SitesPaths, &BearerAuth)
)]
pub struct ApiDoc;

/// Paths that need no token.
const PUBLIC_PATHS: [&str; 2] = ["/api/v1/version", "/api/v1/openapi.json"];

/// Declares the two bearer schemes (user token, agent credential) and adds
/// to every operation what any of them may answer: 401 without a valid
/// credential and 403 with one that may not call it (all but
/// [`PUBLIC_PATHS`]), 503 past the request deadline (all but the streams),
/// 413 for a body too large (operations with a body) and 500 when the
/// store fails.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A user token (VDC_TOKEN); today every user token has the administrator role",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent_credential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A host's agent credential (vdca.<host>.<secret>), made by POST /api/v1/hosts; only for the agent routes",
                    ))
                    .build(),
            ),
        );
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if !public {
                    // An operation that names its own credential keeps it.
                    op.security.get_or_insert_with(|| {
                        vec![utoipa::openapi::security::SecurityRequirement::new(
                            "token",
                            Vec::<String>::new(),
                        )]
                    });
                    op.responses
                        .responses
                        .entry("401".into())
                        .or_insert_with(|| error("missing or wrong API token"));
                    op.responses.responses.entry("403".into()).or_insert_with(|| {
                        error("the credential may not call this operation (an agent credential on a user route, a user token on an agent route, a report for another host)")
                    });
                    if crate::auth::has_deadline(path) {
                        op.responses
                            .responses
                            .entry("503".into())
                            .or_insert_with(|| {
                                error("the server did not finish the request within its deadline")
                            });
                    }
                }
                if op.request_body.is_some() {
                    op.responses
                        .responses
                        .entry("413".into())
                        .or_insert_with(|| error("the request body is too large"));
                }
                op.responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| error("the server failed (its store)"));
            }
        }
    }
}
