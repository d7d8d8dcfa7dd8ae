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
    /// Run the agent: deploy what the config asks for, then keep watching it.
    Agent {
        /// The config file.
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Check a config file: exit 0 if valid, 2 with located errors if not.
    Validate {
        #[arg(short, long, default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Inspect the plugins this agent can load.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
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

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed at once, so a
/// signal that arrives while the agent is still starting is not lost (the
/// default action would kill the agent and orphan its apps).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
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
    init_logs(args.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("starting tokio");
    let result = runtime.block_on(async {
        match args.command {
            Command::Agent { config } => slipway::agent::run(&config, shutdown_signal())
                .await
                .map(|()| String::new())
                .map_err(agent_error),
            Command::Validate { config } => {
                slipway::agent::validate(&config).await.map_err(agent_error)
            }
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
