//! Loads a small sample cluster description into a Consul agent: the
//! configuration tree, the catalog services with passing checks, and the
//! leader lock. Prints what it loaded.

use clap::Parser;
use hax_consul::catalog::CheckStatus;
use hax_consul::{ConsulClient, ConsulConfig};
use hax_testkit::sample::{self, SampleSpec};

/// Loads a one-node sample cluster (hax, a confd, ioservices) into Consul,
/// or changes the health check of one of its services.
#[derive(Debug, Parser)]
#[command(name = "hax-sample-cluster", version)]
struct Cli {
    /// Consul agent address.
    #[arg(long, default_value = "127.0.0.1:8500", global = true)]
    consul_address: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Load the sample.
    Load(Args),
    /// Set the health check of a service instance (by its id, the process
    /// fid key): passing, warning or critical.
    SetCheck {
        /// Service id (decimal process fid key, e.g. 21).
        service_id: String,
        /// New status.
        #[arg(value_parser = ["passing", "warning", "critical"])]
        status: String,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// hax's Motr endpoint.
    #[arg(long)]
    hax_endpoint: String,
    /// hax's HTTP port.
    #[arg(long, default_value_t = 8008)]
    hax_http_port: u16,
    /// Number of ioservices.
    #[arg(long, default_value_t = 3)]
    ioservices: u64,
    /// First port of the m0d endpoints.
    #[arg(long, default_value_t = 23000)]
    first_port: u16,
    /// Node name (default: the agent's).
    #[arg(long)]
    node: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let client = match ConsulClient::new(ConsulConfig::new(cli.consul_address.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hax-sample-cluster: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let a = match cli.command {
        Command::Load(a) => a,
        Command::SetCheck { service_id, status } => {
            let status = match status.as_str() {
                "passing" => CheckStatus::Passing,
                "warning" => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            let check = format!("service:{service_id}");
            return match client
                .agent_check_update(&check, status, "set by hax-sample-cluster")
                .await
            {
                Ok(()) => {
                    println!("{check} is now {status:?}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hax-sample-cluster: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    let spec = SampleSpec {
        node: a.node,
        hax_endpoint: a.hax_endpoint,
        hax_http_port: a.hax_http_port,
        ioservices: a.ioservices,
        first_port: a.first_port,
    };
    match sample::load(&client, &spec).await {
        Ok(s) => {
            println!(
                "node {}: hax {}, confd {} at {}",
                s.node, s.hax, s.confd.0, s.confd.1
            );
            for (f, ep) in &s.ioservices {
                println!("ioservice {f} at {ep}");
            }
            println!("leader lock held by session {}", s.session);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hax-sample-cluster: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
