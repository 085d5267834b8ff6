//! Config sources: where resources come from. A source turns its input into
//! `sluice_config::Update`s for the state's one writer. The file source ([`file`]) diffs the
//! file into updates; the DNS source ([`dns`]) resolves DNS clusters' names into their
//! endpoints; the xDS client ([`xds`]) subscribes to an ADS server and feeds the same writer.

pub mod dns;
pub mod file;
pub mod xds;

pub use file::{FileSource, Source};
