//! The tandem binary's library: protocols, listeners, the node, the controller service, and the CLI's commands.
//!
//! `main.rs` only parses the command line; everything it runs lives here so
//! that benches and end-to-end tests reach the same code.

pub mod alloc;
pub mod client;
pub mod cluster_file;
pub mod control;
pub mod controller_service;
pub mod graphite;
pub mod net;
pub mod node;
pub mod proto;
pub mod push;
pub mod raft;
pub mod sim_cli;
pub mod up;

use std::future::Future;

use tokio::sync::broadcast;

/// Runs a server future on a multi-threaded runtime until it ends or until
/// SIGINT/SIGTERM, which is broadcast to every listener for a graceful stop.
pub fn run_server<F, Fut>(server: F) -> anyhow::Result<i32>
where
    F: FnOnce(broadcast::Sender<()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (shutdown, _) = broadcast::channel(1);
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping");
            let _ = stopper.send(());
        });
        server(shutdown).await
    })?;
    Ok(0)
}
