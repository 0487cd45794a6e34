//! Free loopback ports for the agents, haxes and simulated processes the
//! tests start.
//!
//! A port is picked by binding it, then released for the process that will
//! use it. In between, an outgoing connection on the machine (a Consul agent
//! joining the others, any HTTP client) may be given it as its local port if
//! it lies in the ephemeral range, and the process then fails to bind it.
//! So ports are picked below that range when there is room, where no
//! outgoing connection draws from, and from a start that differs between
//! calls, so that tests picking at the same time seldom pick the same ones.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};

use crate::dev_agent::{io_err, DevAgentError};

/// The lowest port picked below the ephemeral range.
const LOWEST: u16 = 10_000;

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
}

/// One port free on 127.0.0.1 right now for TCP.
pub fn free_port() -> Result<u16, DevAgentError> {
    free_ports(1, false)?
        .pop()
        .ok_or_else(|| DevAgentError::Io {
            what: "pick a free port".into(),
            source: std::io::ErrorKind::AddrNotAvailable.into(),
        })
}

/// `n` distinct ports free on 127.0.0.1 right now for TCP, and for UDP as
/// well with `udp_too` (serf listens on both).
pub fn free_ports(n: usize, udp_too: bool) -> Result<Vec<u16>, DevAgentError> {
    let low = ephemeral_low();
    // Every port stays bound until all are picked: they are distinct.
    let mut held = Vec::new();
    let mut ports = BTreeSet::new();
    let span = u64::from(low.saturating_sub(LOWEST).max(1));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
        ^ u64::from(std::process::id());
    let mut candidate = LOWEST + u16::try_from(seed % span).unwrap_or(0);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        let listener = if low > LOWEST + 2_000 && tries < 20_000 {
            candidate = if candidate + 1 >= low {
                LOWEST
            } else {
                candidate + 1
            };
            match TcpListener::bind(("127.0.0.1", candidate)) {
                Ok(l) => l,
                Err(_) => continue,
            }
        } else {
            TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free port"))?
        };
        let port = listener
            .local_addr()
            .map_err(io_err("read a bound port"))?
            .port();
        let udp = !udp_too || UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if udp && ports.insert(port) {
            held.push(listener);
        }
    }
    Ok(ports.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports = free_ports(40, true).expect("picked");
        assert_eq!(ports.len(), 40);
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 40);
        for p in ports {
            if low > LOWEST + 2_000 {
                assert!((LOWEST..low).contains(&p), "{p} not below {low}");
            }
            TcpListener::bind(("127.0.0.1", p)).expect("free for TCP");
            UdpSocket::bind(("127.0.0.1", p)).expect("free for UDP");
        }
    }
}
