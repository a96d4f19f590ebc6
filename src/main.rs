use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Sidecar that turns a request/response backend into real-time push.
#[derive(Parser, Debug)]
#[command(name = "sidestream", version)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, env = "SIDESTREAM_CONFIG", default_value = "config/demo.toml")]
    config: PathBuf,
    /// Validate the configuration, print every problem, and exit (0 valid, 64 invalid).
    #[arg(long)]
    check_config: bool,
}

/// sysexits.h EX_USAGE / EX_CONFIG family: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match sidestream::config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        println!("{}: ok ({} topic(s))", cli.config.display(), config.topics.len());
        return ExitCode::SUCCESS;
    }
    match sidestream::app::App::build(config) {
        Ok(app) => {
            app.run(Box::new(sidestream::app::UnixSignals));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sidestream: {error}");
            ExitCode::FAILURE
        }
    }
}
