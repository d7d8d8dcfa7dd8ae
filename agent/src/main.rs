//! The `slipway` binary: parses arguments, calls the library, prints.

use clap::{Parser, Subcommand};
use slipway::cli;

/// Slipway: a deploy agent whose steps are sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "slipway", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting tokio");
    let result = runtime.block_on(async {
        match args.command {
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
            eprintln!("error: {}", e.message);
            std::process::exit(e.code);
        }
    }
}
