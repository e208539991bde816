//! The `timgate` command: run the gateway, run the emulator, or sign a UserSig.
//!
//! Configuration is loaded and validated before any port is bound; a bad one exits with
//! code 64 and a message naming the key at fault.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use timgate::config::{Config, SecretKey};
use timgate::usersig::{self, Claims};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration or usage problem (BSD's EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "A sidecar gateway in front of Tencent Cloud Chat / TRTC's REST API"
)]
struct Cli {
    /// The configuration file (TOML); `TIMGATE__<SECTION>__<KEY>` variables override it.
    #[arg(long, global = true, default_value = "config/timgate.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::Sign {
            sdkappid,
            identifier,
            expire,
        } => sign(sdkappid, identifier, expire),
        command => serve(&cli.config, command),
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
    println!("{}", usersig::sign(&SecretKey::new(&key), &claims).as_str());
    ExitCode::SUCCESS
}

fn serve(path: &std::path::Path, command: Command) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("timgate: invalid configuration {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime can be built on any supported OS");
    let result = runtime.block_on(async move {
        match command {
            Command::Emulate { listen } => {
                let addr = listen.unwrap_or(config.emulator.listen);
                let listener = TcpListener::bind(addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "emulator listening");
                timgate::emulate(&config, listener, shutdown_signal()).await;
                Ok(true)
            }
            _ => {
                let listener = TcpListener::bind(config.server.listen).await?;
                timgate::run(config, listener, shutdown_signal()).await
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown requested: draining");
}
