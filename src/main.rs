//! The `forewarn` command line: parses flags, builds the pieces from the
//! library and reports. Everything that decides anything lives in the
//! library; each command's shell is in `cli/<command>.rs`.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: tasks allocate on one worker and free on another, where glibc's
/// arenas contend on a lock (measured: a fifth of the dispatcher's CPU).
/// Built without transparent huge pages (`no_thp` in Cargo.toml): with them,
/// replay at 1 M parcels held 491-500 bytes a parcel at the peak, without
/// them 446-452, and ran 5-8 % faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line on standard output; a reader that closed the pipe is an error the
/// command returns (and `main` takes as done), never a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

mod cli;

/// Tells parcel customers and branches about problems before they call.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backtest: run a JSON Lines file of events through the engine in event time.
    Replay(cli::replay::ReplayArgs),
    /// Proof that forewarn speaks first: replay the events and judge every
    /// customer contact against what forewarn had already said.
    Report(cli::report::ReportArgs),
    /// Check a rule pack; errors name file:line:column.
    Check {
        /// The rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the rule unit tests in DIR/tests/*.toml.
    Test {
        /// The rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Show the message a rule would send a customer (sample data or a real alert line), an SMS with its segments.
    Render(cli::render::RenderArgs),
    /// Write a realistic synthetic network's events (v1 contract), deterministic per seed;
    /// with --nats, publish them live.
    Simulate(cli::simulate::SimulateArgs),
    /// Run the processor on NATS JetStream until SIGTERM or SIGINT (SIGHUP reloads the rules).
    Run(cli::run::RunArgs),
    /// Dead letters: list them, or send them back once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: cli::dlq::DlqCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => cli::replay::replay(args),
        Command::Report(args) => cli::report::report(args),
        Command::Check { dir } => cli::rules::check(&dir),
        Command::Test { dir } => cli::rules::test(&dir),
        Command::Render(args) => cli::render::render(args),
        Command::Simulate(args) => cli::simulate::simulate(args),
        Command::Run(args) => cli::run::run(args),
        Command::Dlq { command } => cli::dlq::dlq(command),
    };
    match result {
        Ok(code) => code,
        // The reader closed the pipe (`forewarn replay … | head`): it has what it wanted.
        Err(e)
            if e.chain()
                .any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
