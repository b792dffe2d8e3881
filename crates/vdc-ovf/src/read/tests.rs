//! Descriptors shaped like those VMware, VirtualBox and OVF 2.x tools
//! write (written for these tests from the DMTF specification and the
//! tools' documented output, trimmed to what matters).

use super::*;
use crate::write_descriptor;

const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-123" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web01-disk1.vmdk" ovf:id="file1" ovf:size="318767104"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="1073741824"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>The kind of installed guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>2 virtual CPU(s)</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>2048MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item ovf:required="false"><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation><rasd:ElementName>CD/DVD drive 1</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>15</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item ovf:required="false"><rasd:ElementName>Video card</rasd:ElementName><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceType>24</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="nvram" vmw:value="web01.nvram"/>
    </VirtualHardwareSection>
    <AnnotationSection ovf:required="false"><Info>A human-readable annotation</Info><Annotation>web tier</Annotation></AnnotationSection>
  </VirtualSystem>
</Envelope>"#;

const VIRTUALBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="devbox-disk001.vmdk"/>
    <File ovf:id="file2" ovf:href="devbox-disk002.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="0f6c"/>
    <Disk ovf:capacity="1073741824" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="1a2b"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="devbox">
    <Info>A virtual machine</Info>
    <ProductSection><Info>Meta-information about the installed software</Info><Product>devbox</Product></ProductSection>
    <OperatingSystemSection ovf:id="96"><Info>The kind of installed guest operating system</Info><Description>Debian_64</Description><vbox:OSType ovf:required="false">Debian_64</vbox:OSType></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>devbox</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:Description>Number of virtual CPUs</rasd:Description><rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:ElementName>1024 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>ideController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>sataController0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption><rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>3</rasd:AddressOnParent><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation><rasd:ElementName>sound</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType><rasd:ResourceType>35</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>disk1</rasd:ElementName><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>8</rasd:InstanceID><rasd:Parent>5</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:ElementName>disk2</rasd:ElementName><rasd:HostResource>/disk/vmdisk2</rasd:HostResource><rasd:InstanceID>9</rasd:InstanceID><rasd:Parent>5</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{7d2c}" name="devbox"><ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info></vbox:Machine>
  </VirtualSystem>
</Envelope>"#;

const OVF2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData" ovf:version="2.0">
  <References><File ovf:id="f1" ovf:href="app.vmdk" ovf:size="1000"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="512" ovf:capacityAllocationUnits="byte * 2^20"/></DiskSection>
  <NetworkSection><Info>nets</Info><Network ovf:name="backend"/></NetworkSection>
  <VirtualSystem ovf:id="app">
    <Info>app</Info>
    <VirtualHardwareSection>
      <Info>hw</Info>
      <Item><rasd:ElementName>cpu</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:ElementName>mem</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <EthernetPortItem><epasd:Address>52:54:00:aa:bb:cc</epasd:Address><epasd:Connection>backend</epasd:Connection><epasd:ElementName>eth0</epasd:ElementName><epasd:InstanceID>3</epasd:InstanceID><epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>
      <StorageItem><sasd:ElementName>disk</sasd:ElementName><sasd:HostResource>ovf:/disk/d1</sasd:HostResource><sasd:InstanceID>4</sasd:InstanceID><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

#[test]
fn vmware_descriptors() {
    let p = parse_descriptor(VMWARE).unwrap();
    assert_eq!(p.system.name, "web01");
    assert_eq!((p.system.cpus, p.system.memory_mib), (2, 2048));
    assert_eq!(
        p.system.disks,
        vec![OvfDisk {
            file: "web01-disk1.vmdk".into(),
            file_size: Some(318767104),
            capacity_bytes: 16 << 30
        }]
    );
    assert_eq!(p.system.nics[0].network, "VM Network");
    let ignored = p.ignored.join("; ");
    for want in [
        "SCSI controller 0",
        "CD/DVD drive 1",
        "Video card",
        "vmw:Config",
        "vmw:ExtraConfig",
        "AnnotationSection",
    ] {
        assert!(ignored.contains(want), "{want} not in {ignored}");
    }
}

#[test]
fn virtualbox_descriptors() {
    let p = parse_descriptor(VIRTUALBOX).unwrap();
    assert_eq!(p.system.name, "devbox", "the id names a VM without <Name>");
    assert_eq!((p.system.cpus, p.system.memory_mib), (1, 1024));
    let files: Vec<_> = p.system.disks.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(files, ["devbox-disk001.vmdk", "devbox-disk002.vmdk"]);
    assert_eq!(p.system.disks[0].capacity_bytes, 10 << 30);
    assert_eq!(p.system.nics[0].network, "NAT");
    let ignored = p.ignored.join("; ");
    for want in [
        "ideController0",
        "sataController0",
        "sound",
        "vbox:Machine",
        "ProductSection",
    ] {
        assert!(ignored.contains(want), "{want} not in {ignored}");
    }
}

#[test]
fn ovf2_items_read_like_ovf1_ones() {
    let p = parse_descriptor(OVF2).unwrap();
    assert_eq!((p.system.cpus, p.system.memory_mib), (4, 2048));
    assert_eq!(p.system.disks[0].capacity_bytes, 512 << 20);
    assert_eq!(p.system.nics[0].network, "backend");
    assert_eq!(p.system.nics[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    assert!(p.ignored.is_empty(), "{:?}", p.ignored);
}

#[test]
fn what_vdc_writes_it_reads_back() {
    let vm = OvfSystem {
        name: "a<b>&c".into(),
        cpus: 2,
        memory_mib: 300,
        disks: vec![
            OvfDisk {
                file: "x-disk0.vmdk".into(),
                file_size: Some(99),
                capacity_bytes: 1 << 30,
            },
            OvfDisk {
                file: "x-disk1.vmdk".into(),
                file_size: Some(7),
                capacity_bytes: 2 << 30,
            },
        ],
        nics: vec![OvfNic {
            network: "lab".into(),
            mac: Some("52:54:00:01:02:03".into()),
        }],
    };
    let p = parse_descriptor(&write_descriptor(&vm)).unwrap();
    assert_eq!(p.system, vm);
    assert_eq!(
        p.ignored,
        vec!["device 'SCSI controller 0' (resource type 6)".to_string()]
    );
}

#[test]
fn bad_descriptors_are_refused_with_the_reason() {
    assert!(matches!(
        parse_descriptor("<Envelope"),
        Err(OvfError::Xml(_))
    ));
    assert!(matches!(
        parse_descriptor("<Foo/>"),
        Err(OvfError::NotAnEnvelope(_))
    ));
    assert_eq!(
        parse_descriptor(r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#),
        Err(OvfError::NoVirtualSystem)
    );
    let dangling = OVF2.replace(r#"ovf:fileRef="f1""#, r#"ovf:fileRef="nope""#);
    assert!(matches!(
        parse_descriptor(&dangling),
        Err(OvfError::Dangling(_))
    ));
    let no_mem = OVF2.replace(
        "<rasd:ResourceType>4</rasd:ResourceType>",
        "<rasd:ResourceType>99</rasd:ResourceType>",
    );
    assert!(matches!(
        parse_descriptor(&no_mem),
        Err(OvfError::Missing(_))
    ));
    let bad_units = OVF2.replace("byte * 2^30", "furlongs");
    assert!(matches!(
        parse_descriptor(&bad_units),
        Err(OvfError::BadUnits(_))
    ));
}

#[test]
fn allocation_unit_forms() {
    assert_eq!(allocation_units("byte").unwrap(), 1);
    assert_eq!(allocation_units("byte * 2^20").unwrap(), 1 << 20);
    assert_eq!(allocation_units("byte*2^30").unwrap(), 1 << 30);
    assert_eq!(allocation_units("byte * 10^3").unwrap(), 1000);
    assert_eq!(allocation_units("MegaBytes").unwrap(), 1 << 20);
    assert_eq!(allocation_units("GigaBytes").unwrap(), 1 << 30);
    for bad in ["byte * 3^2", "byte * 2^99", "hertz", "byte * 2^x"] {
        assert!(allocation_units(bad).is_err(), "{bad}");
    }
}
