//! The control plane's inputs: a watched directory of YAML in the proxy's schema, and the
//! registry API's registrations.

pub mod dir;
pub mod registry;
