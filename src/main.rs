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

/// jemalloc, chosen by measurement (`tests/benches/storm.sh`, README "Memory"): after a
/// reconnect storm of 8 000 SSE clients glibc's malloc kept the whole 200 MiB peak resident;
/// jemalloc with the decay below gives it back within seconds, at no measurable cost per
/// delivery.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options (tikv-jemallocator prefixes its symbols with `_rjem_`; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them):
/// - purge freed small pages after 1 s instead of 10 s, from a background thread so no
///   request pays for it;
/// - `muzzy_decay_ms:0`: purged pages are given back at once (`MADV_DONTNEED`), not left
///   lazily freed (`MADV_FREE` pages still count in the RSS an operator watches);
/// - `oversize_threshold:1 MiB`: buffers of 1 MiB or more (a backend body or line near
///   `max_body_bytes`, a large deflate) come from jemalloc's dedicated arena, which purges
///   eagerly, so a hostile backend's oversized line does not stay resident for the decay.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:1048576".as_ptr(),
);

/// `const char *malloc_conf`: a thin pointer to a C string, as jemalloc reads it.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// Safety: it points at a `'static` C string literal that is never written.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

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
