//! The directory source: YAML files in the proxy's own schema, selected per proxy.
//!
//! ```text
//! DIR/*.yaml                  every proxy
//! DIR/clusters/NAME/*.yaml    proxies whose node.cluster is NAME
//! DIR/nodes/ID/*.yaml         the proxy whose node.id is ID
//! ```
//!
//! Every file is a complete proxy config, validated on its own exactly as `sluice validate`
//! does (so an error names the file, line, column and field), except that a cluster may list
//! no endpoints (the registry may supply them): a route table and the clusters it names live
//! in one file. A proxy whose node id has a directory gets the common files and its
//! node's; otherwise one whose node cluster has a directory gets the common files and its
//! cluster's; any other gets the common files. Where the common files and the more specific
//! layer define a resource of the same type and name, the specific one wins; two files of one layer defining the same resource is
//! an error naming both. The `admin` and `node` sections of these files are ignored: they are
//! each proxy's own business. Files whose name does not end in `.yaml` or `.yml`, and hidden
//! files, are skipped.

use sluice_config::{ConfigErrors, Resource, ResourceKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which proxies a set of files applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every proxy.
    All,
    /// Proxies whose `node.cluster` is this.
    Cluster(String),
    /// The proxy whose `node.id` is this.
    Node(String),
}

/// What the directory holds: the resources of each scope, each with the file it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirConfig {
    /// Resources by scope, then by (type, name).
    pub scopes: BTreeMap<Scope, BTreeMap<ResourceKey, (Resource, PathBuf)>>,
}

impl DirConfig {
    /// The resources of a scope: the common ones with the scope's own layered on top.
    pub fn resources(&self, scope: &Scope) -> BTreeMap<ResourceKey, Resource> {
        let mut out = BTreeMap::new();
        let layers = [Scope::All, scope.clone()];
        let layers = if *scope == Scope::All {
            &layers[..1]
        } else {
            &layers[..]
        };
        for scope in layers {
            if let Some(rs) = self.scopes.get(scope) {
                for (k, (r, _)) in rs {
                    out.insert(k.clone(), r.clone());
                }
            }
        }
        out
    }

    /// The scope a proxy gets (see the module docs).
    pub fn scope_of(&self, node_id: &str, cluster: &str) -> Scope {
        let node = Scope::Node(node_id.to_string());
        let cluster = Scope::Cluster(cluster.to_string());
        if self.scopes.contains_key(&node) {
            node
        } else if self.scopes.contains_key(&cluster) {
            cluster
        } else {
            Scope::All
        }
    }

    /// True when no file defines anything.
    pub fn is_empty(&self) -> bool {
        self.scopes.values().all(BTreeMap::is_empty)
    }
}

/// Reads the whole directory. Every problem of every file is reported (each file's located
/// errors, then duplicates across files); nothing is returned unless all files are valid, so a
/// broken edit never reaches a proxy (the control plane keeps serving the last good snapshot).
pub fn load(dir: &Path) -> Result<DirConfig, ConfigErrors> {
    let mut errors = Vec::new();
    let mut out = DirConfig::default();
    let mut scopes = vec![(Scope::All, dir.to_path_buf())];
    for (sub, make) in [
        ("clusters", Scope::Cluster as fn(String) -> Scope),
        ("nodes", Scope::Node as fn(String) -> Scope),
    ] {
        let base = dir.join(sub);
        match read_dir_sorted(&base) {
            Ok(entries) => {
                for p in entries.into_iter().filter(|p| p.is_dir()) {
                    if let Some(name) = p.file_name().and_then(|n| n.to_str())
                        && !name.starts_with('.')
                    {
                        scopes.push((make(name.to_string()), p));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.extend(
                ConfigErrors::whole_file(&base.display().to_string(), format!("cannot read: {e}"))
                    .0,
            ),
        }
    }
    for (scope, path) in scopes {
        let files = match read_dir_sorted(&path) {
            Ok(f) => f,
            Err(e) => {
                errors.extend(
                    ConfigErrors::whole_file(
                        &path.display().to_string(),
                        format!("cannot read directory: {e}"),
                    )
                    .0,
                );
                continue;
            }
        };
        let layer = out.scopes.entry(scope).or_default();
        for file in files.into_iter().filter(|p| is_yaml(p)) {
            let name = file.display().to_string();
            let options = sluice_config::ParseOptions {
                endpoints_optional: true,
            };
            let text = std::fs::read_to_string(&file);
            let parsed = text
                .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read file: {e}")))
                .and_then(|t| sluice_config::parse_with(&t, &name, &options));
            let config = match parsed {
                Ok(c) => c,
                Err(e) => {
                    errors.extend(e.0);
                    continue;
                }
            };
            for (key, r) in config.resources() {
                if let Some((_, other)) = layer.get(&key) {
                    errors.extend(
                        ConfigErrors::whole_file(
                            &name,
                            format!(
                                "{} \"{}\" is also defined in {} (one scope may define a \
                                 resource once)",
                                key.0,
                                key.1,
                                other.display()
                            ),
                        )
                        .0,
                    );
                    continue;
                }
                layer.insert(key, (r, file.clone()));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn is_yaml(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect::<Vec<_>>();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::{Resource, ResourceType};

    fn cluster(name: &str, port: u16) -> String {
        format!("clusters:\n  - {{ name: {name}, endpoints: [127.0.0.1:{port}] }}\n")
    }

    fn endpoints_port(rs: &BTreeMap<ResourceKey, Resource>, name: &str) -> u16 {
        match rs.get(&(ResourceType::Endpoints, name.to_string())) {
            Some(Resource::Endpoints(e)) => e.endpoints[0].address.port(),
            other => panic!("no endpoints for {name}: {other:?}"),
        }
    }

    #[test]
    fn layers_are_merged_most_specific_last() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("common.yaml"),
            cluster("a", 1) + "  - { name: b, endpoints: [127.0.0.1:2] }\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("clusters/web")).unwrap();
        std::fs::write(d.path().join("clusters/web/a.yaml"), cluster("a", 10)).unwrap();
        std::fs::create_dir_all(d.path().join("nodes/n1")).unwrap();
        std::fs::write(d.path().join("nodes/n1/x.yml"), cluster("a", 100)).unwrap();
        std::fs::write(d.path().join("README.md"), "not config").unwrap();
        std::fs::write(d.path().join(".hidden.yaml"), "not: [valid").unwrap();
        let c = load(d.path()).unwrap();
        assert_eq!(c.scope_of("n2", "other"), Scope::All);
        let other = c.resources(&c.scope_of("n2", "other"));
        assert_eq!(endpoints_port(&other, "a"), 1);
        assert_eq!(endpoints_port(&other, "b"), 2);
        assert_eq!(c.scope_of("n2", "web"), Scope::Cluster("web".into()));
        let web = c.resources(&Scope::Cluster("web".into()));
        assert_eq!(endpoints_port(&web, "a"), 10);
        assert_eq!(endpoints_port(&web, "b"), 2);
        assert_eq!(c.scope_of("n1", "web"), Scope::Node("n1".into()));
        let n1 = c.resources(&Scope::Node("n1".into()));
        assert_eq!(endpoints_port(&n1, "a"), 100);
        assert_eq!(endpoints_port(&n1, "b"), 2);
    }

    #[test]
    fn every_error_of_every_file_is_reported_with_its_location() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), cluster("a", 1)).unwrap();
        std::fs::write(d.path().join("b.yaml"), cluster("a", 2)).unwrap();
        std::fs::write(
            d.path().join("c.yaml"),
            "clusters:\n  - { name: c, endpoints: [127.0.0.1:3], conect_timeout: 1s }\n",
        )
        .unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("b.yaml") && e.contains("also defined in") && e.contains("a.yaml"),
            "{e}"
        );
        assert!(e.contains("c.yaml:2:"), "{e}");
        assert!(e.contains("conect_timeout"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = load(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("cannot read directory"), "{e}");
    }
}
