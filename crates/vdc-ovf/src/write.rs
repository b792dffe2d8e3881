//! The OVF 1.x descriptor vdc writes for an exported VM: References (one
//! file per disk), DiskSection, NetworkSection, one VirtualSystem with an
//! OperatingSystemSection and a VirtualHardwareSection (processor, memory
//! in `byte * 2^20`, a SCSI controller, the disk drives, the NICs with
//! their network names and MACs).

use std::fmt::Write as _;

use crate::OvfSystem;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The descriptor of `vm`.
pub fn write_descriptor(vm: &OvfSystem) -> String {
    let mut x = String::new();
    let name = esc(&vm.name);
    x.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="1.0">
  <References>
"#);
    for (i, d) in vm.disks.iter().enumerate() {
        let size = d
            .file_size
            .map(|s| format!(r#" ovf:size="{s}""#))
            .unwrap_or_default();
        let _ = writeln!(
            x,
            r#"    <File ovf:id="file{n}" ovf:href="{}"{size}/>"#,
            esc(&d.file),
            n = i + 1
        );
    }
    x.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disks</Info>\n");
    for (i, d) in vm.disks.iter().enumerate() {
        let _ = writeln!(
            x,
            r#"    <Disk ovf:diskId="vmdisk{n}" ovf:fileRef="file{n}" ovf:capacity="{}" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>"#,
            d.capacity_bytes,
            n = i + 1
        );
    }
    x.push_str("  </DiskSection>\n  <NetworkSection>\n    <Info>Networks</Info>\n");
    let mut nets: Vec<&str> = vm.nics.iter().map(|n| n.network.as_str()).collect();
    nets.dedup();
    for n in &nets {
        let _ = writeln!(
            x,
            r#"    <Network ovf:name="{0}"><Description>vdc network {0}</Description></Network>"#,
            esc(n)
        );
    }
    let _ = write!(
        x,
        r#"  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine exported by vdc</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101">
      <Info>Guest operating system</Info>
      <Description>Other Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vdc-q35</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{mem} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
"#,
        cpus = vm.cpus,
        mem = vm.memory_mib
    );
    let mut id = 4;
    for (i, _) in vm.disks.iter().enumerate() {
        let _ = write!(
            x,
            r#"      <Item>
        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>
        <rasd:ElementName>disk{i}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource>
        <rasd:InstanceID>{id}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
"#,
            n = i + 1
        );
        id += 1;
    }
    for (i, nic) in vm.nics.iter().enumerate() {
        let mac = nic
            .mac
            .as_ref()
            .map(|m| format!("\n        <rasd:Address>{}</rasd:Address>", esc(m)))
            .unwrap_or_default();
        let _ = write!(
            x,
            r#"      <Item>{mac}
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>{net}</rasd:Connection>
        <rasd:ElementName>nic{i}</rasd:ElementName>
        <rasd:InstanceID>{id}</rasd:InstanceID>
        <rasd:ResourceSubType>virtio-net</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
"#,
            net = esc(&nic.network)
        );
        id += 1;
    }
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}
