//! The file source: reads and validates the config file (every error located by file, line,
//! column and field), and turns each new version into the update from the live resources.
//! It watches only its own file: events for other files in the directory (a log file written
//! next to the config, say) are ignored, and a text that already failed is not re-read and
//! re-reported until it changes.

use sluice_config::{Config, ConfigErrors, Resource, ResourceKey, Update};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file, watched for changes and re-read on `SIGHUP`.
    File(PathBuf),
    /// Text held in memory (the demo, tests); `name` labels errors.
    Inline {
        /// Name used in error messages.
        name: String,
        /// YAML.
        text: String,
    },
}

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    /// A valid config, different from the last one loaded.
    Changed(Box<Config>),
    /// The same text as last time (applied or failed): nothing to do.
    Unchanged,
}

/// The file (or inline text) source.
#[derive(Debug)]
pub struct FileSource {
    source: Source,
    /// The last text read, valid or not.
    last_text: Option<String>,
}

impl FileSource {
    /// A source that has read nothing yet.
    pub fn new(source: Source) -> Self {
        FileSource {
            source,
            last_text: None,
        }
    }

    /// The file, for a file source.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) => Some(p),
            Source::Inline { .. } => None,
        }
    }

    /// Reads and validates the config. Unless `force`, a text identical to the last one read
    /// (whether it applied or failed) gives [`Loaded::Unchanged`], so a broken file is reported
    /// once, not on every unrelated event.
    pub fn load(&mut self, force: bool) -> Result<Loaded, ConfigErrors> {
        let (text, name) = match &self.source {
            Source::File(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors::whole_file(&name, format!("cannot read file: {e}"))
                })?;
                (text, name)
            }
            Source::Inline { name, text } => (text.clone(), name.clone()),
        };
        if !force && self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(Loaded::Unchanged);
        }
        let parsed = sluice_config::parse(&text, &name);
        self.last_text = Some(text);
        if let Ok(c) = &parsed {
            for w in c.warnings() {
                tracing::warn!(file = %name, "{w}");
            }
        }
        parsed.map(|c| Loaded::Changed(Box::new(c)))
    }

    /// The update that takes `live` to `config`. A DNS cluster's endpoints come from the DNS
    /// source, not the file: they are never removed while the file keeps the DNS cluster.
    pub fn update(config: &Config, live: &BTreeMap<ResourceKey, Resource>) -> Update {
        let mut update = sluice_config::diff(live, &config.resources());
        update.removals.retain(|(kind, name)| {
            *kind != sluice_config::ResourceType::Endpoints
                || !config
                    .clusters
                    .iter()
                    .any(|c| c.name == *name && c.discovery.is_some())
        });
        update
    }

    /// Watches the file; sends `()` on each change to it. `None` for inline text or when the
    /// platform cannot watch (then `SIGHUP` reloads).
    pub fn watch(&self, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let path = self.path()?;
        // Watch the directory: editors and Kubernetes ConfigMap mounts replace the file rather
        // than write to it.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let file_name = path.file_name().map(OsString::from)?;
        let mut watcher = match notify::recommended_watcher(
            move |ev: notify::Result<notify::Event>| {
                if let Ok(e) = ev
                    && !e.kind.is_access()
                    && e.paths.iter().any(|p| concerns(p, &file_name))
                {
                    let _ = tx.send(());
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP to reload");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; use SIGHUP to reload");
            return None;
        }
        Some(watcher)
    }
}

/// True when an event on `path` may change the config file `file_name`: the file itself, or
/// the `..data` link (and its `..`-prefixed siblings) through which a Kubernetes ConfigMap
/// mount swaps every file at once.
fn concerns(path: &Path, file_name: &OsString) -> bool {
    match path.file_name() {
        Some(n) => n == file_name.as_os_str() || n.as_encoded_bytes().starts_with(b".."),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_own_events_count() {
        let name = OsString::from("sluice.yaml");
        assert!(concerns(Path::new("/etc/sluice/sluice.yaml"), &name));
        assert!(concerns(Path::new("/etc/sluice/..data"), &name));
        assert!(concerns(Path::new("/etc/sluice/..2026_12_01.123"), &name));
        assert!(!concerns(Path::new("/etc/sluice/sluice.log"), &name));
        assert!(!concerns(Path::new("/etc/sluice/.sluice.yaml.swp"), &name));
    }

    #[test]
    fn a_failed_text_is_not_reread_until_it_changes() {
        let dir = tempfile_dir();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "listeners: [").unwrap();
        let mut src = FileSource::new(Source::File(path.clone()));
        assert!(src.load(false).is_err());
        assert!(matches!(src.load(false), Ok(Loaded::Unchanged)));
        assert!(src.load(true).is_err(), "a forced reload reports again");
        std::fs::write(&path, "clusters: []\n").unwrap();
        assert!(matches!(src.load(false), Ok(Loaded::Changed(_))));
        assert!(matches!(src.load(false), Ok(Loaded::Unchanged)));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-source-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
