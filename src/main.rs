//! The `sluice` command line: `proxy`, `validate`, `demo`.

mod demo;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// Run the proxy with a config file (reloaded when it changes and on SIGHUP).
    Proxy {
        /// Config file (YAML).
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
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

impl RunArgs {
    fn options(&self, source: Source, watch: bool) -> Options {
        Options {
            source,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            drain_timeout: self.drain_timeout,
            handle_signals: true,
            watch,
            filters: Vec::new(),
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
            run,
            no_watch,
        } => {
            let proxy = Proxy::start(run.options(Source::File(config), !no_watch))?;
            Ok(exit_code(proxy.wait()))
        }
        Command::Validate { files } => Ok(validate(&files)),
        Command::Demo { run } => {
            let source = demo::prepare().context("starting the demo upstreams")?;
            let proxy = Proxy::start(run.options(source, false))?;
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
