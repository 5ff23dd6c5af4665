//! `aura`: one binary for every role, the whole mesh, and the client commands.
//! Wiring only: parse, resolve config, hand over to the crates that do the work.
#![forbid(unsafe_code)]

mod client;
mod config;
mod roles;
mod up;

use clap::Parser;

/// mimalloc rather than glibc's malloc: under load the services allocate from many tokio
/// threads at once (h2 frames, protobuf messages, Redis replies), and a profile of the mesh
/// with 64 clients showed glibc's malloc, free and arena-lock waits at about a sixth of its
/// CPU (benchmarks/README.md has the A/B).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = config::Cli::parse();
    if let Err(err) = run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: config::Cli) -> anyhow::Result<()> {
    match cli.command {
        config::Command::Serve { role, opts } => {
            let _telemetry = aura_common::telemetry::init(&format!("aura-{}", role.name()));
            let settings = config::Settings::resolve(&opts)?;
            roles::serve(role, settings).await
        }
        config::Command::Up(up) => {
            // One process serves every role: one `service.name`; spans still name their
            // gRPC service (`rpc.service`).
            let _telemetry = aura_common::telemetry::init("aura");
            up::run(up).await
        }
        config::Command::Workflow(cmd) => client::workflow(cli.client, cmd).await,
        config::Command::Run(cmd) => client::run(cli.client, cmd).await,
        config::Command::Queue(cmd) => client::queue(cli.client, cmd).await,
        config::Command::Schedule(cmd) => client::schedule(cli.client, cmd).await,
        config::Command::Keys(cmd) => client::keys(cmd).await,
        config::Command::Events(cmd) => client::events(cli.client, cmd).await,
        config::Command::Metrics { workflow, window } => client::metrics(cli.client, workflow, window).await,
    }
}
