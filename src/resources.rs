//! A guest's resources: defaults and bounds, defined once for the manifest, the command line and
//! the VMM.

/// vCPUs when nothing says otherwise.
pub const DEFAULT_CPUS: u8 = 2;
/// The most vCPUs krbottle asks libkrun for.
pub const MAX_CPUS: u8 = 64;
/// Guest RAM in MiB when nothing says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// The least guest RAM accepted: libkrunfw's kernel, libkrun's init and a shell run in it (the
/// emulated-hypervisor harness boots its guests with this much); an agent wants far more.
pub const MIN_MEMORY_MIB: u32 = 256;
