//! Reading an OVF descriptor (1.x or 2.x, from vdc, VMware or VirtualBox)
//! into an [`OvfSystem`] and the list of what was ignored.

use std::collections::HashMap;

use roxmltree::{Document, Node};

use crate::{OvfDisk, OvfError, OvfNic, OvfSystem};

/// A descriptor read: the VM, and what vdc leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The virtual machine.
    pub system: OvfSystem,
    /// What the descriptor holds that vdc does not make, in words.
    pub ignored: Vec<String>,
}

/// Bytes per unit of a DMTF allocation-units string: `byte`, `byte *
/// 2^20`, `byte * 10^3`, or the words `KiloBytes`, `MegaBytes`,
/// `GigaBytes` (any case, spaces ignored).
pub fn allocation_units(s: &str) -> Result<u64, OvfError> {
    let norm: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let bad = || OvfError::BadUnits(s.to_string());
    Ok(match norm.as_str() {
        "" | "byte" | "bytes" => 1,
        "kilobytes" | "kb" | "kib" => 1 << 10,
        "megabytes" | "mb" | "mib" => 1 << 20,
        "gigabytes" | "gb" | "gib" => 1 << 30,
        other => {
            let rest = other
                .strip_prefix("bytes*")
                .or_else(|| other.strip_prefix("byte*"))
                .ok_or_else(bad)?;
            let (base, exp) = rest.split_once('^').ok_or_else(bad)?;
            let base: u64 = base.parse().map_err(|_| bad())?;
            let exp: u32 = exp.parse().map_err(|_| bad())?;
            if base != 2 && base != 10 {
                return Err(bad());
            }
            base.checked_pow(exp).ok_or_else(bad)?
        }
    })
}

fn attr<'a>(n: Node<'a, '_>, local: &str) -> Option<&'a str> {
    n.attributes()
        .find(|a| a.name() == local)
        .map(|a| a.value())
}

fn child<'a, 'i>(n: Node<'a, 'i>, local: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == local)
}

fn text<'a>(n: Node<'a, '_>, local: &str) -> Option<&'a str> {
    child(n, local).and_then(|c| c.text()).map(str::trim)
}

fn number(what: &str, v: &str) -> Result<u64, OvfError> {
    v.trim().parse().map_err(|_| OvfError::BadNumber {
        what: what.to_string(),
        value: v.to_string(),
    })
}

fn prefixed(n: Node<'_, '_>) -> String {
    let local = n.tag_name().name();
    match n.tag_name().namespace() {
        Some(ns) if ns.contains("vmware") => format!("vmw:{local}"),
        Some(ns) if ns.contains("virtualbox") => format!("vbox:{local}"),
        _ => local.to_string(),
    }
}

/// Reads a descriptor.
pub fn parse_descriptor(xml: &str) -> Result<Parsed, OvfError> {
    let doc = Document::parse(xml).map_err(|e| OvfError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(OvfError::NotAnEnvelope(root.tag_name().name().to_string()));
    }
    let mut ignored = Vec::new();
    let mut files: HashMap<&str, (&str, Option<u64>)> = HashMap::new();
    if let Some(refs) = child(root, "References") {
        for f in refs.children().filter(|c| c.is_element()) {
            let (Some(id), Some(href)) = (attr(f, "id"), attr(f, "href")) else {
                continue;
            };
            let size = attr(f, "size")
                .map(|s| number("file size", s))
                .transpose()?;
            files.insert(id, (href, size));
        }
    }
    let mut disks: HashMap<&str, (String, Option<u64>, u64)> = HashMap::new();
    let mut system = None;
    for section in root.children().filter(|c| c.is_element()) {
        match section.tag_name().name() {
            "References" | "NetworkSection" => {}
            "DiskSection" => {
                for d in section
                    .children()
                    .filter(|c| c.is_element() && c.tag_name().name() == "Disk")
                {
                    let id = attr(d, "diskId").unwrap_or_default();
                    let units =
                        allocation_units(attr(d, "capacityAllocationUnits").unwrap_or("byte"))?;
                    let capacity = number("disk capacity", attr(d, "capacity").unwrap_or("0"))?
                        .checked_mul(units)
                        .ok_or_else(|| OvfError::BadUnits("disk capacity too large".into()))?;
                    let file_ref = attr(d, "fileRef").ok_or_else(|| {
                        OvfError::Dangling(format!("disk '{id}' names no file (a blank disk)"))
                    })?;
                    let (href, size) = files.get(file_ref).ok_or_else(|| {
                        OvfError::Dangling(format!(
                            "disk '{id}' names file '{file_ref}', which References lacks"
                        ))
                    })?;
                    disks.insert(id, (href.to_string(), *size, capacity));
                }
            }
            "VirtualSystem" => system = Some(section),
            "VirtualSystemCollection" => return Err(OvfError::NoVirtualSystem),
            _ => ignored.push(format!("section {}", prefixed(section))),
        }
    }
    let vs = system.ok_or(OvfError::NoVirtualSystem)?;
    let name = text(vs, "Name")
        .filter(|n| !n.is_empty())
        .or_else(|| attr(vs, "id"))
        .unwrap_or("imported")
        .to_string();
    let mut cpus = None;
    let mut memory_mib = None;
    let mut out_disks = Vec::new();
    let mut nics = Vec::new();
    let mut hardware_seen = false;
    for s in vs.children().filter(|c| c.is_element()) {
        match s.tag_name().name() {
            "Info" | "Name" | "OperatingSystemSection" | "Description" => {}
            "VirtualHardwareSection" if !hardware_seen => {
                hardware_seen = true;
                for item in s.children().filter(|c| c.is_element()) {
                    match item.tag_name().name() {
                        "Info" | "System" => {}
                        "Item" | "StorageItem" | "EthernetPortItem" => {
                            let rt = text(item, "ResourceType").unwrap_or_default();
                            let label = text(item, "ElementName").unwrap_or("unnamed");
                            match rt {
                                "3" => {
                                    let q = number(
                                        "CPU count",
                                        text(item, "VirtualQuantity").unwrap_or("1"),
                                    )?;
                                    cpus = Some(u32::try_from(q).unwrap_or(u32::MAX));
                                }
                                "4" => {
                                    let q = number(
                                        "memory",
                                        text(item, "VirtualQuantity").unwrap_or("0"),
                                    )?;
                                    let units = allocation_units(
                                        text(item, "AllocationUnits").unwrap_or("byte * 2^20"),
                                    )?;
                                    let bytes = q.checked_mul(units).ok_or_else(|| {
                                        OvfError::BadUnits("memory too large".into())
                                    })?;
                                    memory_mib = Some(bytes >> 20);
                                }
                                "10" => nics.push(OvfNic {
                                    network: text(item, "Connection")
                                        .unwrap_or_default()
                                        .to_string(),
                                    mac: text(item, "Address").map(str::to_string),
                                }),
                                "17" => {
                                    let host = text(item, "HostResource").unwrap_or_default();
                                    let id = host.rsplit('/').next().unwrap_or_default();
                                    let (file, file_size, capacity_bytes) = if host
                                        .contains("/file/")
                                    {
                                        let (href, size) = files.get(id).ok_or_else(|| {
                                            OvfError::Dangling(format!("disk drive '{label}' names file '{id}', which References lacks"))
                                        })?;
                                        (href.to_string(), *size, 0)
                                    } else {
                                        disks.get(id).cloned().ok_or_else(|| {
                                            OvfError::Dangling(format!("disk drive '{label}' names disk '{id}', which the DiskSection lacks"))
                                        })?
                                    };
                                    out_disks.push(OvfDisk {
                                        file,
                                        file_size,
                                        capacity_bytes,
                                    });
                                }
                                _ => ignored.push(format!("device '{label}' (resource type {rt})")),
                            }
                        }
                        _ => ignored.push(format!(
                            "{}{}",
                            prefixed(item),
                            attr(item, "key")
                                .map(|k| format!(" {k}"))
                                .unwrap_or_default()
                        )),
                    }
                }
            }
            "VirtualHardwareSection" => {
                ignored.push("another VirtualHardwareSection (the first is used)".into())
            }
            _ => ignored.push(format!("section {}", prefixed(s))),
        }
    }
    Ok(Parsed {
        system: OvfSystem {
            name,
            cpus: cpus.ok_or(OvfError::Missing("processor (resource type 3)"))?,
            memory_mib: memory_mib.ok_or(OvfError::Missing("memory (resource type 4)"))?,
            disks: out_disks,
            nics,
        },
        ignored,
    })
}

#[cfg(test)]
mod tests;
