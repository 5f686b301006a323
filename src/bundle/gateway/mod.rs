//! placeholder
pub mod sni;
