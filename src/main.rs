//! The `sluice` command line: `proxy`, `control-plane`, `validate`, `demo`.

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
    about = "Sluice: a service-mesh proxy and control plane",
    disable_help_subcommand = true
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
        #[arg(long, env = "SLUICE_NO_WATCH")]
        no_watch: bool,
    },
    /// Check config files: print every error (parse-level and semantic, in file order, each
    /// `file:line:col: field: message`) and every warning; exit non-zero on any error.
    Validate {
        /// Config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Fail on warnings too (a non-loopback admin API, no listeners, a route that can
        /// never match, the risky edge settings).
        #[arg(long, env = "SLUICE_VALIDATE_STRICT")]
        strict: bool,
    },
    /// Which listener, virtual host, route and cluster a request gets, and why each earlier
    /// route did not take it: `sluice explain -c FILE 'GET http://api.example.com/v2/users'
    /// -H 'x-canary: 1'`, or against a running proxy's live config with `--admin ADDR`.
    Explain {
        /// `METHOD URL` (`GET http://host/path`), or just the URL for GET; `tcp://host:port`
        /// for a TCP listener.
        request: String,
        /// The config file to explain against (`--admin` wins when both are given, so a
        /// `SLUICE_CONFIG` in the environment does not get in its way).
        #[arg(short, long, env = "SLUICE_CONFIG", required_unless_present = "admin")]
        config: Option<PathBuf>,
        /// A running proxy's admin address (`127.0.0.1:7191`): its live config.
        #[arg(long, env = "SLUICE_EXPLAIN_ADMIN")]
        admin: Option<String>,
        /// A request header, `name: value` (repeatable); `Host` overrides the URL's. The
        /// environment variable takes several, one per line.
        #[arg(
            short = 'H',
            long = "header",
            env = "SLUICE_EXPLAIN_HEADERS",
            value_delimiter = '\n'
        )]
        headers: Vec<String>,
        /// The listener (default: the one on the URL's port, else the first of its kind).
        #[arg(long, env = "SLUICE_EXPLAIN_LISTENER")]
        listener: Option<String>,
        /// The TLS server name, for a TLS passthrough listener.
        #[arg(long, env = "SLUICE_EXPLAIN_SNI")]
        sni: Option<String>,
        /// Print JSON.
        #[arg(long, env = "SLUICE_EXPLAIN_JSON")]
        json: bool,
    },
    /// Print the help of a command (`sluice help validate`).
    Help {
        /// The command; none for the overview.
        command: Option<String>,
    },
    /// Run the control plane (`-c FILE`), or ask a running one about its proxies (`status`).
    ControlPlane {
        /// Settings file (YAML): addresses, the watched directory, registry limits.
        #[arg(short, long, env = "SLUICE_CONTROL_PLANE_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<ControlPlaneAction>,
    },
    /// Start example upstreams and a proxy in front of them (no outside services needed);
    /// with `--mesh DIR`, a control plane and two sidecars fed over xDS instead.
    Demo {
        #[command(flatten)]
        run: RunArgs,
        /// Run the mesh demo from this directory (`examples/mesh`).
        #[arg(long, env = "SLUICE_DEMO_MESH")]
        mesh: Option<PathBuf>,
        /// The `web` listener's port (`echo-tcp` takes the next; 0 picks free ones). Default
        /// 8080; a busy default port is replaced by a free one and the banner says so.
        #[arg(long, env = "SLUICE_DEMO_PORT", conflicts_with = "mesh")]
        port: Option<u16>,
    },
}

#[derive(Subcommand, Debug)]
enum ControlPlaneAction {
    /// Connected proxies: node, snapshot, per type the version sent and ACKed, the last NACK
    /// (like `istioctl proxy-status`).
    Status {
        /// The control plane's HTTP address.
        #[arg(long, env = "SLUICE_CONTROL_PLANE_HTTP", default_value = sluice_control_plane::settings::DEFAULT_HTTP)]
        http: String,
        /// Print the raw JSON.
        #[arg(long, env = "SLUICE_STATUS_JSON")]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Worker threads (default, or 0: one per CPU core).
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM (`30s`, `500ms`).
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

#[derive(clap::Args, Debug)]
struct XdsArgs {
    /// xDS (ADS, state of the world or with `--xds-delta` incremental) server to take listeners, route tables, clusters,
    /// endpoints and certificates from, as a URI (`http://127.0.0.1:7180`, or `https://…` for TLS).
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
    /// Incremental (delta) xDS instead of state of the world: only changed resources travel.
    #[arg(long, env = "SLUICE_XDS_DELTA")]
    xds_delta: bool,
    /// A file holding the bootstrap token that proves which identity this proxy may have: the
    /// control plane's CA issues its certificate (SDS) only to a stream presenting it.
    #[arg(long, env = "SLUICE_XDS_TOKEN_FILE", requires = "xds")]
    xds_token_file: Option<PathBuf>,
    /// PEM bundle the control plane's certificate must chain to, for an `https://` `--xds`
    /// (default: the system bundle).
    #[arg(long, env = "SLUICE_XDS_CA", requires = "xds")]
    xds_ca: Option<PathBuf>,
}

impl XdsArgs {
    fn options(&self) -> anyhow::Result<Option<XdsOptions>> {
        let Some(server) = self.xds.clone() else {
            return Ok(None);
        };
        let mut options =
            XdsOptions::new(server, self.node_id.clone().unwrap_or_default(), decode_xds);
        options.cluster = self.xds_cluster.clone();
        options.initial_fetch_timeout = self.xds_initial_fetch_timeout;
        options.delta = self.xds_delta;
        options.ca = self.xds_ca.clone();
        if options.ca.is_some() && !options.server.starts_with("https://") {
            anyhow::bail!("--xds-ca needs an https:// --xds URI");
        }
        if let Some(path) = &self.xds_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--xds-token-file {}: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("--xds-token-file {}: the file is empty", path.display());
            }
            options.token = Some(token.to_string());
        }
        Ok(Some(options))
    }
}

/// Envoy proto → model resources for the xDS client (`sluice_config::xds`); an error names the
/// resource type and name, then the field (the NACK's `error_detail`).
fn decode_xds(
    type_url: &str,
    any: &sluice_proxy::source::xds::Any,
) -> Result<Vec<sluice_config::Resource>, String> {
    sluice_config::xds::decode(type_url, any).map_err(|e| {
        match sluice_config::xds::resource_type(type_url) {
            Some(kind) => e.describe(kind),
            None => e.to_string(),
        }
    })
}

impl RunArgs {
    fn options(&self, source: Source, watch: bool, xds: Option<XdsOptions>) -> Options {
        Options {
            source,
            workers: match self.workers {
                Some(n) if n > 0 => n,
                _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            drain_timeout: self.drain_timeout,
            handle_signals: true,
            watch,
            filters: Vec::new(),
            xds,
            log_level: LOG_LEVEL.get().cloned(),
        }
    }
}

/// Changes the log filter of the running process (the admin API's `POST /logging`).
static LOG_LEVEL: std::sync::OnceLock<sluice_proxy::LogLevelHook> = std::sync::OnceLock::new();

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
            let proxy = Proxy::start(run.options(source, !no_watch, xds.options()?))?;
            Ok(exit_code(proxy.wait()))
        }
        Command::Validate { files, strict } => Ok(validate(&files, strict)),
        Command::Explain {
            request,
            config,
            admin,
            headers,
            listener,
            sni,
            json,
        } => {
            let (method, url) = match request.trim().split_once(char::is_whitespace) {
                Some((m, u)) => (m.to_ascii_uppercase(), u.trim().to_string()),
                None => ("GET".to_string(), request.trim().to_string()),
            };
            let mut query = sluice_proxy::explain::Query {
                method,
                url,
                listener,
                sni,
                ..Default::default()
            };
            for h in &headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("-H {h}: write `name: value`"))?;
                query.headers.push((k.trim().into(), v.trim().into()));
            }
            let explanation = match (config, admin) {
                (Some(file), None) => {
                    let config =
                        sluice_config::load_file(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
                    sluice_proxy::explain::explain(&config, &query).map_err(anyhow::Error::msg)?
                }
                (_, Some(admin)) => {
                    let (status, body) =
                        fetch(&admin, &explain_path(&query), "the proxy's admin API")?;
                    if status != 200 {
                        anyhow::bail!("{}", body.trim_end());
                    }
                    serde_json::from_str(&body).context("invalid /explain JSON")?
                }
                (None, None) => anyhow::bail!("give -c FILE or --admin ADDR"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Help { command } => {
            use clap::CommandFactory;
            let mut cli = Cli::command();
            cli.build();
            match command {
                None => cli.print_help()?,
                Some(name) => match cli.find_subcommand_mut(&name) {
                    Some(sub) => sub.print_help()?,
                    None => {
                        let names: Vec<String> = cli
                            .get_subcommands()
                            .map(|c| c.get_name().to_string())
                            .collect();
                        anyhow::bail!("no command `{name}`; the commands are {}", names.join(", "));
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ControlPlane { config, action } => match action {
            Some(ControlPlaneAction::Status { http, json }) => control_plane_status(&http, json),
            None => {
                let Some(config) = config else {
                    anyhow::bail!(
                        "control-plane needs a settings file: -c FILE (or the `status` command)"
                    );
                };
                run_control_plane(&config)
            }
        },
        Command::Demo {
            run,
            mesh: Some(dir),
            ..
        } => {
            let mesh = demo::mesh(
                &dir,
                |source, xds| run.options(source, false, Some(xds)),
                decode_xds,
            )?;
            mesh.print_usage();
            let code = exit_code(mesh.frontend.wait());
            mesh.backend.shutdown();
            Ok(code)
        }
        Command::Demo {
            run,
            mesh: None,
            port,
        } => {
            let demo = demo::prepare(port).context("starting the demo upstreams")?;
            let proxy = Proxy::start(run.options(demo.source, false, None))?;
            demo::print_usage(&proxy, &demo.notes);
            Ok(exit_code(proxy.wait()))
        }
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
fn run_control_plane(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let settings = sluice_control_plane::settings::load(config).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-cp")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cp = sluice_control_plane::serve::start(settings)
            .await
            .map_err(anyhow::Error::msg)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: closing every ADS stream");
        cp.shutdown();
        Ok(ExitCode::SUCCESS)
    })
}

/// `GET path` from `addr` (`ip:port`) over HTTP/1.1: (status, body). `what` names the server
/// in errors.
fn fetch(addr: &str, path: &str, what: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr}: expected ip:port for {what}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach {what} at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer from {what}"))?;
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The admin API's `/explain` path for `q`, percent-encoded.
fn explain_path(q: &sluice_proxy::explain::Query) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let mut p = format!("/explain?method={}&url={}", enc(&q.method), enc(&q.url));
    for (k, v) in &q.headers {
        p.push_str(&format!("&header={}", enc(&format!("{k}: {v}"))));
    }
    if let Some(l) = &q.listener {
        p.push_str(&format!("&listener={}", enc(l)));
    }
    if let Some(s) = &q.sni {
        p.push_str(&format!("&sni={}", enc(s)));
    }
    p
}

/// `sluice control-plane status`: the connected proxies, one line per proxy and type.
fn control_plane_status(http: &str, raw: bool) -> anyhow::Result<ExitCode> {
    let (_, body) = fetch(http, "/status", "the control plane")?;
    let body = body.as_str();
    if raw {
        print!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = serde_json::from_str(body).context("invalid /status JSON")?;
    let proxies = v["proxies"].as_array().cloned().unwrap_or_default();
    let short = |s: Option<&str>| s.map_or("-".to_string(), |s| s.chars().take(12).collect());
    println!(
        "{:<24} {:<14} {:<10} {:<9} {:<13} {:<13} LAST NACK",
        "NODE", "CLUSTER", "SNAPSHOT", "TYPE", "SENT", "ACKED"
    );
    for p in &proxies {
        let types = p["types"].as_object().cloned().unwrap_or_default();
        for (t, st) in types {
            let nack = st["last_nack"]["error"].as_str().unwrap_or("-");
            println!(
                "{:<24} {:<14} {:<10} {:<9} {:<13} {:<13} {}",
                p["node_id"].as_str().unwrap_or("?"),
                p["cluster"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .unwrap_or("-"),
                p["snapshot_key"].as_str().unwrap_or("-"),
                t,
                short(st["sent_version"].as_str()),
                short(st["acked_version"].as_str()),
                nack
            );
        }
    }
    if proxies.is_empty() {
        println!("(no proxy connected)");
    }
    // Who holds which certificate from the built-in CA.
    let identities: Vec<(&str, &str)> = proxies
        .iter()
        .filter_map(|p| Some((p["node_id"].as_str()?, p["identity"].as_str()?)))
        .collect();
    if !identities.is_empty() {
        println!("\n{:<24} IDENTITY", "NODE");
        for (node, id) in identities {
            println!("{node:<24} {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(exit: Exit) -> ExitCode {
    match exit {
        Exit::Drained => ExitCode::SUCCESS,
        Exit::Forced => ExitCode::from(130),
    }
}

fn validate(files: &[PathBuf], strict: bool) -> ExitCode {
    let mut failed = false;
    for f in files {
        match sluice_config::load_file(f) {
            Ok(config) => {
                let source = std::fs::read_to_string(f).unwrap_or_default();
                let warnings =
                    sluice_config::warning_lines(&f.display().to_string(), &source, &config);
                for w in &warnings {
                    println!("{w}");
                }
                if strict && !warnings.is_empty() {
                    failed = true;
                    println!(
                        "{}: {} warning(s), failing with --strict",
                        f.display(),
                        warnings.len()
                    );
                } else {
                    println!("{}: ok", f.display());
                }
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    println!("{e}");
                }
                println!("{}: {} error(s)", f.display(), errors.0.len());
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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Reloadable, for the admin API's `POST /logging?level=…`.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
    let _ = LOG_LEVEL.set(sluice_proxy::LogLevelHook(std::sync::Arc::new(
        move |spec: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        },
    )));
}
