//! The `slipway` binary: parses arguments, calls the library, prints.

use clap::{Parser, Subcommand, ValueEnum};
use slipway::cli;
use std::path::PathBuf;

/// Slipway: a deploy agent whose steps are sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "slipway", version, about)]
struct Args {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: compile a plugin component (stdin) for this binary's
    /// runtime (stdout). The agent runs it in a child process.
    #[command(name = "compile-component", hide = true)]
    CompileComponent,
    /// Run the agent: deploy what the config asks for, then keep watching it.
    Agent {
        /// The config file.
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// The traffic layer: own the public ports of the environments with
    /// `traffic`, and send each request to the release the agent names.
    /// The agent starts one when none runs; a second one started while one
    /// runs takes its listening sockets over (an upgrade that drops nothing).
    Proxy(slipway::traffic::ProxyOptions),
    /// Check a config file: exit 0 if valid, 2 with located errors if not.
    Validate {
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Write a commented starter config for one app (build, staging,
    /// production, smoke and health checks, automatic rollback).
    Init(slipway::init::InitOptions),
    /// Copy the journal (history, releases, pins) to a file; safe while the
    /// agent runs.
    Backup {
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
        /// The backup file to write.
        #[arg(long)]
        to: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a journal backup in place of the state dir's journal (the agent
    /// must be stopped).
    Restore {
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
        /// The backup file to restore.
        #[arg(long)]
        from: PathBuf,
        /// Replace the state dir's journal if there is one (it is kept
        /// beside it as journal.db.replaced-TIME).
        #[arg(long)]
        force: bool,
    },
    /// Inspect the plugins this agent can load.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Write a plugin: a skeleton to start from, and one step run locally.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// What runs where: per app and environment, the release, its health,
    /// the process, and deployments waiting or pinned.
    Status {
        /// Only this app.
        app: Option<String>,
        /// Follow the running deployment (or the next one) live until it
        /// ends; exit 1 if it did not succeed.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An app's deployments, newest first; with `--env`, what that
    /// environment ran and why each change happened.
    History {
        app: String,
        /// One environment's changes (activations, rollbacks, stops).
        #[arg(long)]
        env: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One deployment: its steps, their outcomes and durations, and why it
    /// ended as it did.
    Show {
        deployment: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The plugin logs of every step of a deployment.
    Logs {
        deployment: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put an environment back on its last good release (or `--to` a
    /// version), and follow it to the end.
    Rollback {
        app: String,
        #[arg(long)]
        env: String,
        /// The version to go back to (a release still on this server).
        #[arg(long)]
        to: Option<String>,
        /// Return once it has started instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let a deployment waiting at a manual gate (`promote = "manual"`)
    /// into the environment.
    Approve {
        app: String,
        #[arg(long)]
        env: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How the operator commands reach the running agent.
#[derive(clap::Args)]
struct ApiArgs {
    /// The agent's config: its state dir holds the API address and token.
    #[arg(short, long, default_value = "slipway.toml")]
    config: PathBuf,
    /// The API address (host:port or URL; or SLIPWAY_API), instead of the
    /// one the agent wrote in its state dir.
    #[arg(long)]
    api: Option<String>,
    /// A file holding the API token, instead of the state dir's api-token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    fn target(&self) -> slipway::client::Target {
        slipway::client::Target {
            config: self.config.clone(),
            api: self.api.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the builtin plugins.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what a plugin's describe() returns and whether this agent can
    /// run it.
    Inspect {
        /// A builtin name (`http-check`) or a path to a `.wasm` component.
        target: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `slipway plugin` does.
#[derive(Subcommand)]
enum PluginCommand {
    /// Write a plugin skeleton that builds and passes `plugins inspect`:
    /// source with describe() and a params schema, build.sh, README.
    New(slipway::authoring::skeleton::NewOptions),
    /// Run one step of a plugin locally, through the agent's runtime, and
    /// print its logs and result. Exit 0 if it passed, 1 if not, 2 for a
    /// bad command line.
    Test(slipway::authoring::local_step::TestOptions),
}

/// `slipway plugin new|test`; a step that ran but did not pass prints its
/// report and exits 1.
async fn plugin_command(command: PluginCommand) -> Result<String, cli::CliError> {
    match command {
        PluginCommand::New(opts) => {
            slipway::authoring::skeleton::new_plugin(&opts).map_err(Into::into)
        }
        PluginCommand::Test(opts) => {
            let run = slipway::authoring::local_step::run(&opts).await?;
            if run.passed {
                return Ok(run.text);
            }
            print!("{}", run.text);
            Err(cli::CliError::failed(format!(
                "the step did not pass: {}",
                run.verdict
            )))
        }
    }
}

fn init_logs(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(slipway::logging::Redacted(std::io::stderr));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGINT (stop everything) or SIGTERM (leave apps serving).
/// The handlers are installed at once, so a signal that arrives while the
/// agent is still starting is not lost (the default action would kill the
/// agent mid-transition).
fn shutdown_signal() -> impl Future<Output = slipway::agent::Shutdown> {
    use slipway::agent::Shutdown;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => Shutdown::StopAll,
            _ = term.recv() => Shutdown::Leave,
        }
    }
}

/// Config errors exit 2 (usage / config error), everything else 1.
fn agent_error(e: slipway::agent::AgentError) -> cli::CliError {
    let code = match e {
        slipway::agent::AgentError::Config(_) => 2,
        slipway::agent::AgentError::Startup(_) => 1,
    };
    cli::CliError {
        message: e.to_string(),
        code,
    }
}

fn main() {
    let args = Args::parse();
    if let Command::CompileComponent = args.command {
        std::process::exit(slipway::runtime::compile_component_stdio());
    }
    // `plugin test` prints the step's log lines itself; the agent's copy of
    // them on stderr would only repeat them. wasi-http warns of every
    // refused connection ("connect error") beside Slipway's own line for
    // the failed check, which names the app, the environment and the URL.
    let default_filter = match args.command {
        Command::Plugin { .. } => "warn,slipway::plugin=off,wasmtime_wasi_http=error",
        _ => "info,wasmtime_wasi_http=error",
    };
    init_logs(args.log_format, default_filter);
    // A file size limit (`ulimit -f`, systemd's `LimitFSIZE=`) must fail the
    // write that reaches it (EFBIG), reported with the file it was for, not
    // kill the agent with SIGXFSZ between a transition and its record.
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // glibc gives each thread that allocates its own malloc arena; with
    // tokio workers, blocking threads and wasm fibers moving between them,
    // that was ~40 MB of half-empty arenas at 200 apps (BENCHMARKS.md).
    // Two arenas keep the agent's RSS near what it uses.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2)
    };
    let runtime = match &args.command {
        // The traffic layer on one thread by default, like one nginx
        // worker: no work stealing between threads on its hot path
        // (BENCHMARKS.md, "The traffic layer").
        Command::Proxy(options) if options.threads <= 1 => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        Command::Proxy(options) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
    .expect("starting tokio");
    let result = runtime.block_on(async {
        match args.command {
            Command::CompileComponent => unreachable!("run before the runtime starts"),
            Command::Agent { config } => slipway::agent::run(&config, shutdown_signal())
                .await
                .map(|()| String::new())
                .map_err(agent_error),
            Command::Proxy(options) => slipway::traffic::run_proxy(options, async {
                shutdown_signal().await;
            })
            .await
            .map(|()| String::new())
            .map_err(|message| cli::CliError { message, code: 1 }),
            Command::Validate { config } => slipway::agent::validate(&config)
                .await
                .map(|valid| {
                    for warning in &valid.warnings {
                        eprintln!("{warning}");
                    }
                    valid.summary
                })
                .map_err(agent_error),
            Command::Init(opts) => slipway::init::init(&opts).map_err(Into::into),
            Command::Backup { config, to, force } => {
                slipway::backup::backup(&config, &to, force).map_err(Into::into)
            }
            Command::Restore {
                config,
                from,
                force,
            } => slipway::backup::restore(&config, &from, force).map_err(Into::into),
            Command::Status { app, watch, api } => {
                let target = api.target();
                if watch {
                    slipway::ops::watch(&target, app.as_deref(), api.json).await
                } else {
                    slipway::ops::status(&target, app.as_deref(), api.json).await
                }
            }
            Command::History {
                app,
                env,
                limit,
                api,
            } => slipway::ops::history(&api.target(), &app, env.as_deref(), limit, api.json).await,
            Command::Show { deployment, api } => {
                slipway::ops::show(&api.target(), &deployment, api.json).await
            }
            Command::Logs { deployment, api } => {
                slipway::ops::logs(&api.target(), &deployment, api.json).await
            }
            Command::Rollback {
                app,
                env,
                to,
                no_wait,
                api,
            } => {
                slipway::ops::rollback(&api.target(), &app, &env, to.as_deref(), !no_wait, api.json)
                    .await
            }
            Command::Approve { app, env, api } => {
                slipway::ops::approve(&api.target(), &app, &env, api.json).await
            }
            Command::Plugin { command } => plugin_command(command).await,
            Command::Plugins { command } => match command {
                PluginsCommand::List { json } => cli::plugins_list(json).await,
                PluginsCommand::Inspect { target, json } => {
                    cli::plugins_inspect(&target, json).await
                }
            },
        }
    });
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            if e.code == 2 && !e.message.starts_with("error") {
                eprintln!("{}", e.message);
            } else {
                eprintln!("error: {}", e.message);
            }
            std::process::exit(e.code);
        }
    }
}
