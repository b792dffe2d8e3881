//! Networks: create, list, delete, and the address pools behind them.

use std::net::Ipv4Addr;

use serde_json::json;
use vdc_store::{StoreError, StoreExt};
use vdc_types::names::validate_name;
use vdc_types::{ApiError, ErrorCode, Network, NicSpec};

use crate::ipam::{self, Subnet};
use crate::{store_err, switches, Cluster};

impl Cluster {
    /// Every network.
    pub async fn list_networks(&self) -> Result<Vec<Network>, ApiError> {
        self.list_values("/networks/").await
    }

    /// One network.
    pub async fn get_network(&self, name: &str) -> Result<Network, ApiError> {
        self.store
            .get_json(&format!("/networks/{name}"))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("Network", name))
    }

    /// Creates a network (port group) after checking every field: its
    /// switch (or the `existing` switch of a bridge given alone), VLANs,
    /// addresses, and that its pool overlaps no other on the same segment.
    pub async fn create_network(&self, mut n: Network) -> Result<Network, ApiError> {
        validate_name("network", &n.name).map_err(ApiError::invalid)?;
        let switch = match (&n.switch, n.bridge.is_empty()) {
            (Some(sw), _) => {
                let sw = self.get_switch(sw).await.map_err(|_| {
                    ApiError::invalid(format!(
                        "switch '{sw}' does not exist; create it first (vdc switch create) or pick one of `vdc switch list`"
                    ))
                })?;
                let expected = vdc_types::switch::vlan_bridge(&sw.bridge, n.vlan.unwrap_or(1));
                if !n.bridge.is_empty() && n.bridge != expected {
                    return Err(ApiError::invalid(format!(
                        "bridge '{}' is not the bridge of switch '{}' ({expected}); give only the switch",
                        n.bridge, sw.name
                    )));
                }
                sw
            }
            (None, false) => {
                if !switches::rules::valid_ifname(&n.bridge) {
                    return Err(ApiError::invalid(format!(
                        "bridge '{}' is not a valid Linux interface name (1-15 letters, digits, '-', '_', '.')",
                        n.bridge.escape_default()
                    )));
                }
                self.ensure_existing_switch(&n.bridge).await?
            }
            (None, true) => {
                return Err(ApiError::invalid(
                    "a network needs a switch (--switch) or an existing bridge (--bridge)",
                ))
            }
        };
        switches::rules::check_port_group_vlans(&n, &switch).map_err(ApiError::invalid)?;
        if let Some(s) = &n.outbound_shaping {
            switches::rules::check_shaping(s)
                .map_err(|e| ApiError::invalid(format!("outbound shaping: {e}")))?;
            if s.peak_kbit.is_some() {
                return Err(ApiError::invalid(
                    "outbound shaping takes an average rate and a burst; a peak rate applies toward the VM only (shaping)",
                ));
            }
        }
        if let Some(s) = &n.shaping {
            switches::rules::check_shaping(s).map_err(ApiError::invalid)?;
        }
        n.bridge = vdc_types::switch::vlan_bridge(&switch.bridge, n.vlan.unwrap_or(1));
        n.switch = Some(switch.name.clone());
        if n.version > vdc_types::switch::NETWORK_VERSION {
            return Err(ApiError::invalid(format!(
                "network format version {} is newer than this server's ({}); leave 'version' out",
                n.version,
                vdc_types::switch::NETWORK_VERSION
            )));
        }
        n.version = vdc_types::switch::NETWORK_VERSION;
        let sn = Subnet::parse(&n.subnet).map_err(ApiError::invalid)?;
        let start =
            ipam::parse_host(&sn, &n.pool_start, "pool start").map_err(ApiError::invalid)?;
        let end = ipam::parse_host(&sn, &n.pool_end, "pool end").map_err(ApiError::invalid)?;
        if u32::from(start) > u32::from(end) {
            return Err(ApiError::invalid(format!(
                "pool start {start} comes after pool end {end}"
            )));
        }
        if let Some(g) = &n.gateway {
            ipam::parse_host(&sn, g, "gateway").map_err(ApiError::invalid)?;
        }
        let others = self.list_networks().await?;
        if let Some(o) = switches::rules::overlapping_pool(&n, &others) {
            return Err(ApiError::invalid(format!(
                "pool {}–{} overlaps the pool {}–{} of network '{}' on the same switch and VLAN; choose another range or VLAN",
                n.pool_start, n.pool_end, o.pool_start, o.pool_end, o.name
            )));
        }
        self.create_unique(
            &format!("/networks/{}", n.name),
            &n,
            format!("network '{}' already exists; choose another name", n.name),
        )
        .await?;
        self.events
            .publish(
                "network.created",
                &n.name,
                format!("network {} created", n.name),
                json!({"subnet": n.subnet, "switch": n.switch, "vlan": n.vlan, "bridge": n.bridge}),
            )
            .await;
        Ok(n)
    }

    /// Deletes a network no VM uses.
    pub async fn delete_network(&self, name: &str) -> Result<(), ApiError> {
        self.get_network(name).await?;
        let users: Vec<String> = self
            .list_vms()
            .await?
            .into_iter()
            .filter(|v| v.nics.iter().any(|n| n.network == name))
            .map(|v| v.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::invalid_state(format!(
                "network '{name}' is used by VM(s) {}; delete them first",
                users.join(", ")
            )));
        }
        self.store
            .delete(&format!("/networks/{name}"))
            .await
            .map_err(store_err)?;
        self.store
            .txn(
                vec![],
                vec![vdc_store::Op::DeletePrefix(format!("/ipam/{name}/"))],
                vec![],
            )
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "network.deleted",
                name,
                format!("network {name} deleted"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    pub(crate) async fn allocate_ip(&self, net: &Network, vm: &str) -> Result<String, ApiError> {
        let sn = Subnet::parse(&net.subnet).map_err(ApiError::internal)?;
        let start: Ipv4Addr = net
            .pool_start
            .parse()
            .map_err(|_| ApiError::internal("bad pool"))?;
        let end: Ipv4Addr = net
            .pool_end
            .parse()
            .map_err(|_| ApiError::internal("bad pool"))?;
        let gw = net.gateway.as_deref().and_then(|g| g.parse().ok());
        for a in ipam::pool(start, end, gw) {
            let key = format!("/ipam/{}/{a}", net.name);
            match self.store.create_json(&key, &vm).await {
                Ok(_) => return Ok(format!("{a}/{}", sn.prefix)),
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(ApiError::new(
            ErrorCode::InsufficientCapacity,
            format!(
                "network '{}' has no free address left in its pool {}–{}",
                net.name, net.pool_start, net.pool_end
            ),
        ))
    }

    pub(crate) async fn release_ips(&self, nics: &[NicSpec]) {
        for n in nics {
            if let Some(ip) = &n.ip {
                let addr = ip.split('/').next().unwrap_or(ip);
                let _ = self
                    .store
                    .delete(&format!("/ipam/{}/{addr}", n.network))
                    .await;
            }
        }
    }
}
