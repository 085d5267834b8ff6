//! The `sluice` command line: `proxy`, `validate`, `demo`.

mod demo;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_proxy::source::xds::XdsOptions;
use sluice_proxy::{Exit, Options, Proxy, Source};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a service-mesh proxy and control plane"
)]
struct Cli {
    /// Log filter (`info`, `debug`, `sluice_proxy=trace`, ...); RUST_LOG overrides it.
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy with a config file (reloaded when it changes and on SIGHUP) and/or an xDS
    /// server.
    Proxy {
        /// Config file (YAML). Optional with `--xds` (then an empty bootstrap: the admin API on
        /// its default address); its resources are static, xDS cannot replace them.
        #[arg(short, long, env = "SLUICE_CONFIG", required_unless_present = "xds")]
        config: Option<PathBuf>,
        #[command(flatten)]
        xds: XdsArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Do not watch the config file (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
    },
    /// Check config files; print every error and exit non-zero if any.
    Validate {
        /// Config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Start example upstreams and a proxy in front of them (no outside services needed).
    Demo {
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Worker threads (default: one per CPU core).
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM (`30s`, `500ms`).
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

#[derive(clap::Args, Debug)]
struct XdsArgs {
    /// xDS (ADS, state of the world) server to take listeners, route tables, clusters and
    /// endpoints from, as a URI (`http://127.0.0.1:18000`).
    #[arg(long, env = "SLUICE_XDS", requires = "node_id")]
    xds: Option<String>,
    /// The node id sent to the xDS server.
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<String>,
    /// The node cluster sent to the xDS server.
    #[arg(long = "cluster", env = "SLUICE_XDS_CLUSTER", default_value = "")]
    xds_cluster: String,
    /// Report ready after this long even without a complete xDS config (`15s`).
    #[arg(long, env = "SLUICE_XDS_INITIAL_FETCH_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    xds_initial_fetch_timeout: Duration,
}

impl XdsArgs {
    fn options(&self) -> Option<XdsOptions> {
        let server = self.xds.clone()?;
        let mut options =
            XdsOptions::new(server, self.node_id.clone().unwrap_or_default(), decode_xds);
        options.cluster = self.xds_cluster.clone();
        options.initial_fetch_timeout = self.xds_initial_fetch_timeout;
        Some(options)
    }
}

/// Envoy proto → model resources for the xDS client.
// INTEGRATION: replace the body with
// `sluice_config::xds::decode(type_url, any).map_err(|e| e.to_string())` once the mapping
// module lands; until then every xDS response is NACKed with this message.
fn decode_xds(
    type_url: &str,
    _any: &sluice_proxy::source::xds::Any,
) -> Result<Vec<sluice_config::Resource>, String> {
    Err(format!(
        "this build has no Envoy proto decoder for {type_url}"
    ))
}

impl RunArgs {
    fn options(&self, source: Source, watch: bool, xds: Option<XdsOptions>) -> Options {
        Options {
            source,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            drain_timeout: self.drain_timeout,
            handle_signals: true,
            watch,
            filters: Vec::new(),
            xds,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_config::parse_duration(s).map(|d| d.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Proxy {
            config,
            xds,
            run,
            no_watch,
        } => {
            let source = match config {
                Some(path) => Source::File(path),
                None => Source::Inline {
                    name: "(no config file)".into(),
                    text: "{}\n".into(),
                },
            };
            let proxy = Proxy::start(run.options(source, !no_watch, xds.options()))?;
            Ok(exit_code(proxy.wait()))
        }
        Command::Validate { files } => Ok(validate(&files)),
        Command::Demo { run } => {
            let source = demo::prepare().context("starting the demo upstreams")?;
            let proxy = Proxy::start(run.options(source, false, None))?;
            demo::print_usage(&proxy);
            Ok(exit_code(proxy.wait()))
        }
    }
}

fn exit_code(exit: Exit) -> ExitCode {
    match exit {
        Exit::Drained => ExitCode::SUCCESS,
        Exit::Forced => ExitCode::from(130),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        match sluice_config::load_file(f) {
            Ok(config) => {
                println!("{}: ok", f.display());
                for w in config.warnings() {
                    println!("{}: warning: {w}", f.display());
                }
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    println!("{e}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
