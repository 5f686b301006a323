//! The sidecar bundle, host side: the bundle image, one container per bottle, and the layout
//! contract the container's daemons (`crate::daemon`) are started with.

pub mod container;
pub mod image;
pub mod layout;
