//! The `timgate` command: run the gateway, run the emulator, check a configuration, sign
//! a UserSig, or sign a callback's query.
//!
//! Configuration is loaded and validated before any port is bound; a bad one exits with
//! code 64 and a message naming the key at fault. A port that cannot be bound exits 1,
//! naming the listener and its address. A drain that ends with every request answered
//! exits 0; one that cut a request short at `drain_timeout_ms` exits 1. SIGHUP reloads the
//! configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use timgate::config::{Config, LogFormat, SecretKey};
use timgate::logfmt::{PlainFields, PlainFormat, UtcMicros};
use timgate::reload::{ApplyLogs, Source};
use timgate::usersig::{self, Claims};
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Exit code for a configuration or usage problem (BSD's EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "A sidecar gateway in front of Tencent Cloud Chat / TRTC's REST API"
)]
struct Cli {
    /// The configuration file (TOML); `TIMGATE__<SECTION>__<KEY>` variables override it.
    #[arg(
        long,
        global = true,
        env = "TIMGATE_CONFIG",
        default_value = "config/timgate.toml"
    )]
    config: PathBuf,
    /// Log lines as text or JSON; overrides `log.format`. The filter is `RUST_LOG`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Run the Tencent emulator alone, for the apps in the configuration.
    Emulate {
        /// Where to listen; default `emulator.listen` from the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate the configuration and print the effective one as TOML, secrets masked;
    /// exit 64 on any problem.
    Check,
    /// Print a UserSig; the key comes from the TIMGATE_SECRET_KEY environment variable.
    Sign {
        /// The SDKAppID.
        #[arg(long)]
        sdkappid: u64,
        /// The account to sign for.
        #[arg(long)]
        identifier: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        expire: u64,
    },
    /// Print the query string a Tencent callback would carry, for trying the callback
    /// listener with curl; the token comes from the TIMGATE_CALLBACK_TOKEN environment
    /// variable (unset: an unsigned query).
    CallbackSign {
        /// The SDKAppID.
        #[arg(long)]
        sdkappid: u64,
        /// The CallbackCommand, e.g. C2C.CallbackBeforeSendMsg.
        #[arg(long)]
        command: String,
        /// RequestTime, Unix seconds; default now.
        #[arg(long)]
        time: Option<u64>,
    },
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Sign {
        sdkappid,
        identifier,
        expire,
    } = command
    {
        return sign(sdkappid, identifier, expire);
    }
    if let Command::CallbackSign {
        sdkappid,
        command,
        time,
    } = command
    {
        return callback_sign(sdkappid, &command, time);
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!(
                "timgate: invalid configuration {}: {e}",
                cli.config.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A seed is tried on an empty emulator first, so one that Tencent's rules or the
    // emulator would refuse stops the start (and `check`) like any invalid key.
    if let Some(seed) = &config.emulator.seed
        && let Err(refused) = timgate::emulator::Emulator::new(&config.apps).with_seed(Some(seed))
    {
        eprintln!(
            "timgate: invalid configuration {}: {refused}",
            cli.config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Command::Check = command {
        // A closed pipe (`timgate check | head`) is not an error worth a panic.
        let _ = write!(
            std::io::stdout(),
            "# {}: valid. The effective configuration:\n{}",
            cli.config.display(),
            config.to_toml()
        );
        return ExitCode::SUCCESS;
    }
    let forced = cli.log_format.map(|format| match format {
        Format::Json => LogFormat::Json,
        Format::Text => LogFormat::Text,
    });
    let logs = init_logs(forced, config.log.format);
    let fd_limit = timgate::server::raise_fd_limit();
    tracing::debug!(?fd_limit, "open-file limit");
    serve(config, command, cli.config, logs)
}

/// glibc gives each thread that allocates its own malloc arena, and each arena keeps its own
/// peak: with 1,000 busy callers the load bench measured ~4 MiB more resident memory with the
/// workers' arenas than with one (issue 14). One arena, unless `MALLOC_ARENA_MAX` or
/// `GLIBC_TUNABLES` says otherwise. Called before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    let set_by_env = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if !set_by_env {
        // SAFETY: mallopt only sets a parameter of glibc's allocator, read when a thread
        // first needs an arena; no thread but this one exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

/// How often resident memory is compared with what the heap holds.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How much freed memory must have stayed resident since the last trim before the next.
const TRIM_PAST: usize = 2 * 1024 * 1024;
/// The least time between two trims.
const TRIM_GAP: Duration = Duration::from_secs(5);

/// glibc returns freed memory to the system only from the top of its heap. After a burst of
/// connections closes, what they held sits free below longer-lived allocations and stays
/// resident; the next burst is placed partly elsewhere, so the resident size ratchets up
/// (25.0, 29.3, 30.3 MiB over three bursts of 1,000 connections, issue 14). A thread of its
/// own looks every `TRIM_EVERY` and has `malloc_trim` give the free pages back, wherever
/// they are, once load has fallen: when the resident memory that live allocations do not
/// explain is more than what they hold, and has grown by `TRIM_PAST` since the last trim.
/// Under a steady load freed memory is reused, and resident memory stays near what live
/// allocations hold (at 1,000 busy connections 18.5 MiB resident against 24 MB live: much
/// of hyper's buffers is never touched), so it is left alone: a trim holds glibc's
/// (one) arena for a few milliseconds (2–8 ms after 1,000 connections here), and every
/// allocation on a worker waits for it meanwhile. At most one trim per `TRIM_GAP`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("timgate-trim".into())
        .spawn(|| {
            // Resident memory a trim could not give back (thread stacks, allocator pages).
            let mut settled = 0;
            let mut trimmed = std::time::Instant::now();
            loop {
                std::thread::sleep(TRIM_EVERY);
                let (resident, live) = heap();
                let unexplained = resident.saturating_sub(live);
                let fallen = unexplained > live
                    && unexplained >= settled + TRIM_PAST
                    && trimmed.elapsed() >= TRIM_GAP;
                if !fallen {
                    continue;
                }
                trimmed = std::time::Instant::now();
                trim();
                let (resident, live) = heap();
                settled = resident.saturating_sub(live);
                tracing::debug!(
                    returned_bytes = unexplained.saturating_sub(settled),
                    took_us = trimmed.elapsed().as_micros(),
                    "freed heap memory returned to the system"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "freed memory will not be returned to the system");
    }
}

/// This process's resident anonymous bytes (0 if /proc cannot tell), and the bytes its heap
/// holds in live allocations.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn heap() -> (usize, usize) {
    let resident = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    // SAFETY: glibc's `mallinfo` is thread-safe once `mallopt` can no longer run (it runs in
    // `main` before any thread exists); it takes the arena's lock and walks its free lists.
    // `mallinfo`, not `mallinfo2` (glibc 2.33+), so the binary still links on older glibc;
    // its `int` fields are read as unsigned, right up to 4 GiB.
    let info = unsafe { libc::mallinfo() };
    let bytes = |field: libc::c_int| usize::try_from(field.cast_unsigned()).unwrap_or(usize::MAX);
    (
        resident,
        bytes(info.uordblks).saturating_add(bytes(info.hblkhd)),
    )
}

/// Gives every whole free page in the heap back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only releases free pages, under the arena's lock; no allocation
    // moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

type Lines = Box<dyn Layer<Registry> + Send + Sync>;

/// Starts the logs in `forced` (`--log-format`) or else `format`, and returns what a reload
/// calls to change the format (none when `--log-format` fixed it).
fn init_logs(forced: Option<LogFormat>, format: LogFormat) -> Option<ApplyLogs> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = tracing_subscriber::reload::Layer::new(lines(forced.unwrap_or(format)));
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
    if forced.is_some() {
        return None;
    }
    Some(Box::new(move |log: &timgate::config::Log| {
        handle
            .reload(lines(log.format))
            .map_err(|e| format!("the log format could not be changed: {e}"))
    }))
}

/// Log lines in `format` on stderr.
fn lines(format: LogFormat) -> Lines {
    // Colour codes only for a person at a terminal, not for a log collector.
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => Box::new(lines.with_timer(UtcMicros).json()),
        LogFormat::Text => Box::new(
            lines
                .fmt_fields(PlainFields)
                .event_format(PlainFormat::new(UtcMicros)),
        ),
    }
}

fn sign(sdkappid: u64, identifier: String, expire: u64) -> ExitCode {
    let Ok(key) = std::env::var("TIMGATE_SECRET_KEY") else {
        eprintln!("timgate sign: set TIMGATE_SECRET_KEY to the app's SecretKey");
        return ExitCode::from(EXIT_CONFIG);
    };
    let claims = Claims {
        sdkappid,
        identifier,
        time: usersig::unix_now(),
        expire,
        userbuf: None,
    };
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        usersig::sign(&SecretKey::new(&key), &claims).as_str()
    );
    ExitCode::SUCCESS
}

fn callback_sign(sdkappid: u64, command: &str, time: Option<u64>) -> ExitCode {
    let token = std::env::var("TIMGATE_CALLBACK_TOKEN").ok();
    if token.is_none() {
        eprintln!(
            "timgate callback-sign: TIMGATE_CALLBACK_TOKEN is not set: the query is unsigned"
        );
    }
    let time = time.unwrap_or_else(usersig::unix_now);
    let query = timgate::callback::verify::query(sdkappid, command, token.as_deref(), time);
    let _ = writeln!(std::io::stdout(), "{query}");
    ExitCode::SUCCESS
}

fn serve(config: Config, command: Command, path: PathBuf, logs: Option<ApplyLogs>) -> ExitCode {
    return_freed_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads.get())
        .enable_all()
        .build()
        .expect("a Tokio runtime can be built on any supported OS");
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // Installed before any port is bound: SIGHUP's default action ends the process.
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("installing a SIGHUP handler cannot fail on Unix");
        match command {
            Command::Emulate { listen } => {
                let addr = listen.unwrap_or(config.emulator.listen);
                let listener = TcpListener::bind(addr).await.map_err(|source| {
                    let key = if listen.is_some() {
                        "--listen"
                    } else {
                        "emulator.listen"
                    };
                    timgate::BindError { key, addr, source }.to_string()
                })?;
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(%addr, "emulator listening");
                }
                timgate::emulate(&config, listener, shutdown).await;
                Ok(true)
            }
            _ => {
                let (config, listeners) = timgate::bind(config).await.map_err(|e| e.to_string())?;
                let source = Source {
                    path,
                    #[cfg(unix)]
                    hangup,
                    logs,
                };
                timgate::run_reloading(config, listeners, shutdown, Some(source))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            tracing::error!("the drain cut requests short (outcome drain_cut)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("timgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the ports are being
/// bound or the gateway built drains it instead of killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        let mut interrupt = signal(SignalKind::interrupt())
            .expect("installing a SIGINT handler cannot fail on Unix");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}
