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
    /// Log lines for people (`human`) or for log pipelines (`json`, one object per line).
    #[arg(long, value_enum, default_value = "human", env = "SIDESTREAM_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// sysexits.h EX_USAGE / EX_CONFIG family: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
            let app = app.with_reload(cli.config.clone());
            app.run(Box::new(sidestream::app::UnixSignals));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sidestream: {error}");
            ExitCode::FAILURE
        }
    }
}
