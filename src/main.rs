//! `tandem`: the one binary. Parses the command line and runs a subcommand.

use clap::{Parser, Subcommand};

use tandem::{client, controller_service, node, push, sim_cli, up};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "A sharded, replicated, in-memory metrics store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (3 controllers and N nodes on loopback); Ctrl-C stops it.
    Up(up::UpArgs),
    /// Run one controller (a member of the controller group).
    Controller(controller_service::ControllerArgs),
    /// Run one data node.
    Node(node::NodeArgs),
    /// Nodes, their states and roles, degraded and unavailable partitions.
    Status(client::StatusArgs),
    /// Push samples (synthetic or from a file) over the acknowledged native protocol.
    Push(push::PushArgs),
    /// Run a PromQL query against the HTTP API.
    Query(client::QueryArgs),
    /// Compare replica digests partition by partition; exit 1 on divergence.
    Check(client::CheckArgs),
    /// Remove a node for good: its partitions are re-replicated elsewhere.
    Remove(client::NodeCommandArgs),
    /// Move every primary off a node (before maintenance).
    Drain(client::NodeCommandArgs),
    /// Would stopping this node leave some partition without an Active copy?
    SafeToStop(client::NodeCommandArgs),
    /// The sizing simulator: calibrate, size, failures, placement.
    Sim(sim_cli::SimArgs),
}

fn main() {
    tandem::alloc::configure();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| "info,openraft=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Controller(args) => {
            tandem::run_server(|shutdown| controller_service::run(args, shutdown))
        }
        Command::Node(args) => tandem::run_server(|shutdown| node::run(args, shutdown)),
        Command::Status(args) => client::status(args),
        Command::Push(args) => push::run(args),
        Command::Query(args) => client::query(args),
        Command::Check(args) => client::check(args),
        Command::Remove(args) => client::remove(args),
        Command::Drain(args) => client::drain(args),
        Command::SafeToStop(args) => client::safe_to_stop(args),
        Command::Sim(args) => sim_cli::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
