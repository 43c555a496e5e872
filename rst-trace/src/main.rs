use std::process::ExitCode;

use clap::Parser;
use rst_trace::{
    agent,
    cli::{Cli, Command, DEFAULT_LOG_FILTER},
    doctor, top,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(cli.log_level.as_deref().unwrap_or(DEFAULT_LOG_FILTER))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(agent::run(args))),
        Command::Doctor(args) => doctor::run(args),
        Command::Top(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(top::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the chain of causes, no backtrace: this is read by an operator.
            eprintln!("rst-trace: {e:#}");
            ExitCode::from(1)
        }
    }
}
