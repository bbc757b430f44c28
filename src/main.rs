//! anomaly-sidecar: parse flags, set up logging, dispatch, map errors to exit codes.

use anomaly_sidecar::{app, backtest, config, demo, server};
use config::flags::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse_all();
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => runtime_then(|| async move {
            let app = app::start(&args).await?;
            app.wait(app::termination()).await;
            Ok(())
        }),
        Command::Demo(args) => runtime_then(|| demo::run(args)),
        Command::Backtest(args) => backtest(&args),
    }
}

/// `backtest`: rules errors as `check` prints them, then the summary; exits 1 on any error.
fn backtest(args: &config::flags::BacktestArgs) -> ExitCode {
    let rules = match config::rules::load_file(&args.rules) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let run = || -> Result<String, backtest::BacktestError> {
        let mut inputs = args
            .csv
            .iter()
            .map(|p| backtest::input::read_csv(p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = &args.prometheus {
            inputs.extend(backtest::fetch(url, args)?);
        }
        for s in inputs.iter().filter(|s| s.backwards.is_some()) {
            let line = s.backwards.unwrap_or(0);
            eprintln!(
                "warning: {}:{line}: a timestamp before the previous row's; replayed in file order, as a clock that went back",
                s.target
            );
        }
        let labels = args
            .labels
            .as_deref()
            .map(backtest::grade::Labels::read)
            .transpose()?;
        let summary = backtest::run(&rules, &inputs, &args.out, labels.as_ref())?;
        let mut text = backtest::render_summary(&summary);
        if let Some(labels) = &labels {
            text.push_str(&backtest::render_grades(&summary, labels));
        }
        Ok(text)
    };
    match run() {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed
/// in one arena is not reusable by the others: with the scrape, pipeline, HTTP and blocking
/// threads all allocating, RSS ran 6 MB (10k series) to 60 MB (100k) above the live heap.
/// One arena costs nothing measurable here: the pipeline is a single task.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `check`: the rules file, and the web config when one is given (certificates included).
fn check(args: &config::flags::CheckArgs) -> ExitCode {
    let mut ok = true;
    match config::rules::load_file(&args.rules) {
        Ok(set) => println!("ok: {} rules", set.rules.len()),
        Err(errors) => {
            ok = false;
            for e in &errors.0 {
                println!("{e}");
            }
        }
    }
    if let Some(path) = &args.web_config_file {
        match server::WebGuard::load(Some(path)) {
            Ok(guard) => println!(
                "ok: web config {} ({})",
                path.display(),
                if guard.tls() { "https" } else { "http" }
            ),
            Err(e) => {
                ok = false;
                println!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
