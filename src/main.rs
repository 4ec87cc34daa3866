//! The `faultline` binary: load the YAML config, start demo origins if configured, run the
//! Pingora server.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use faultline::Config;
use pingora::server::configuration::Opt;

/// jemalloc rather than the system allocator: a proxied request allocates and frees dozens of
/// small blocks (Pingora's headers, buffers, boxed futures, timers), on which glibc's malloc
/// spends 13% more instructions per request; and rather than mimalloc, which is as cheap per
/// request but holds half as much again per idle HTTP/2 connection (BENCHMARKS.md, allocators).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
/// environment still overrides them). `tcache_max`: the thread cache keeps freed blocks up to
/// 64 KiB instead of 32 KiB, so the 64 KiB body buffer Pingora allocates and frees for every
/// upstream response comes from the cache rather than the arena's extent path (~2k instructions
/// per request; the cache holds at most 20 blocks of each size class per thread).
#[cfg(feature = "jemalloc")]
// The one exported symbol: jemalloc reads it as a `const char *`, which a reference to a
// NUL-terminated byte array is; nothing else names it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 17] = b"tcache_max:65536\0";

/// mimalloc, to compare (`--no-default-features --features mimalloc`).
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An HTTP edge load balancer that answers upstream failures exactly right.
#[derive(Debug, Parser)]
#[command(name = "faultline", version)]
struct Args {
    /// The configuration file.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: PathBuf,
    /// Validate the configuration, print every error found, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (Pingora daemon mode).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listeners of a running faultline (Pingora graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Reload the configuration file when it changes (as `watch: true` in the file).
    #[arg(long = "watch")]
    watch: bool,
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            if record.target() == faultline::ACCESS_LOG_TARGET {
                writeln!(buf, "{}", record.args())
            } else {
                writeln!(
                    buf,
                    "{} {:5} {}: {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
}

/// What `-t` validated, in one line.
fn summary(config: &Config) -> String {
    let tls = config.listeners.iter().filter(|l| l.tls.is_some()).count();
    let backends: usize = config.upstreams.iter().map(|u| u.backends.len()).sum();
    let admin = config.admin.map_or_else(
        || "no admin listener".to_string(),
        |a| format!("admin on {a}"),
    );
    let grace = config
        .server
        .grace_period_seconds
        .map_or_else(String::new, |s| format!(", drain up to {s}s"));
    format!(
        "{} listeners ({tls} TLS), {} upstreams ({backends} backends), {} routes, {admin}{grace}",
        config.listeners.len(),
        config.upstreams.len(),
        config.routes.len(),
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match Config::load(&args.conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("faultline: {} is invalid:", args.conf.display());
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            return ExitCode::from(1);
        }
    };
    if args.test {
        println!(
            "faultline: {} is valid: {}",
            args.conf.display(),
            summary(&config)
        );
        return ExitCode::SUCCESS;
    }
    if args.daemon && !config.demo.is_empty() {
        eprintln!("faultline: demo origins cannot run in daemon mode (-d); drop one of them");
        return ExitCode::from(2);
    }
    init_logging();
    if let Err(e) = faultline::internals::demo::spawn(&config.demo) {
        eprintln!("faultline: {e}");
        return ExitCode::from(1);
    }
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    config.watch |= args.watch;
    let listeners = config.listeners.clone();
    let server = match faultline::server::build(config, Some(opt), Some(args.conf.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faultline: {e}");
            return ExitCode::from(1);
        }
    };
    for l in &listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        log::info!("faultline listening on {scheme}://{}", l.address);
    }
    server.run()
}
