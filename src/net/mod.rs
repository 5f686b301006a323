//! Names and decisions about the network, shared by the manifest, the host side of the bundle
//! and its daemons: [`host`] canonicalises host names and rules once, [`policy`] decides what a
//! bottle may reach.

pub mod host;
pub mod policy;
