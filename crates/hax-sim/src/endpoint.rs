//! Motr endpoint strings, and the stream sockets the emulator listens on for
//! them (`docs/emulator-protocol.md`, "Endpoints").

use std::fmt;
use std::path::PathBuf;

/// Where a peer connects for an endpoint string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP socket.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// An `AF_UNIX` stream socket.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why an endpoint string names no socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {input:?}: {reason}")]
pub struct EndpointError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The LNet pid every Motr endpoint carries.
const LNET_PID: &str = "12345";

/// Motr's mapping of an LNet-style portal and transfer machine id to a TCP
/// port: `tmid | 1<<10 | ((portal<30 ? portal+30 : portal)-30)<<11`.
pub fn lnet_port(portal: u32, tmid: u32) -> Option<u16> {
    if tmid >= 1 << 10 {
        return None;
    }
    let p = if portal < 30 { portal + 30 } else { portal } - 30;
    let port = u64::from(tmid) | 1 << 10 | u64::from(p) << 11;
    u16::try_from(port).ok()
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    /// Accepts the forms the emulator listens on: `inet:tcp:HOST@PORT`,
    /// LNet style `NID@NET:12345:PORTAL:TMID` (TCP on `127.0.0.1`, as the
    /// emulator binds), and `unix:PATH`.
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let err = |reason| EndpointError {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("inet:tcp:") {
            let (host, port) = rest
                .rsplit_once('@')
                .ok_or_else(|| err("expected inet:tcp:HOST@PORT"))?;
            if host.is_empty() {
                return Err(err("empty host"));
            }
            let port: u16 = port.parse().map_err(|_| err("bad port"))?;
            return Ok(Endpoint::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            let mut parts = s.split(':');
            let (Some(nid), Some(pid), Some(portal), Some(tmid), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(err("expected NID@NET:12345:PORTAL:TMID"));
            };
            let (addr, net) = nid
                .split_once('@')
                .ok_or_else(|| err("NID must be ADDR@NET"))?;
            match (addr, net) {
                ("0", "lo") => {}
                (a, "tcp" | "o2ib") if a.parse::<std::net::Ipv4Addr>().is_ok() => {}
                _ => return Err(err("NID must be 0@lo or IPV4@tcp")),
            }
            if pid != LNET_PID {
                return Err(err("LNet pid must be 12345"));
            }
            let portal: u32 = portal.parse().map_err(|_| err("bad portal"))?;
            let tmid: u32 = tmid
                .parse()
                .map_err(|_| err("bad transfer machine id (a number is needed)"))?;
            let port =
                lnet_port(portal, tmid).ok_or_else(|| err("portal/tmid give no TCP port"))?;
            return Ok(Endpoint::Tcp {
                host: "127.0.0.1".to_owned(),
                port,
            });
        }
        Err(err(
            "not inet:tcp:HOST@PORT, LNet NID@NET:12345:PORTAL:TMID or unix:PATH",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn motr_port_mapping() {
        assert_eq!(lnet_port(34, 101), Some(9317));
        assert_eq!(lnet_port(43, 100), Some(27748));
        assert_eq!(lnet_port(43, 101), Some(27749));
        assert_eq!(lnet_port(1, 0), Some(1 << 10 | 1 << 11));
        assert_eq!(lnet_port(1024, 5), None); // too large
        assert_eq!(lnet_port(34, 1024), None);
    }

    #[test]
    fn parses_every_form() {
        for (s, want) in [
            ("inet:tcp:127.0.0.1@22001", tcp("127.0.0.1", 22001)),
            ("inet:tcp:localhost@1", tcp("localhost", 1)),
            ("0@lo:12345:34:101", tcp("127.0.0.1", 9317)),
            ("127.0.0.1@tcp:12345:34:101", tcp("127.0.0.1", 9317)),
            ("192.168.1.5@tcp:12345:43:100", tcp("127.0.0.1", 27748)),
            (
                "unix:/run/hax/ha.sock",
                Endpoint::Unix("/run/hax/ha.sock".into()),
            ),
        ] {
            assert_eq!(s.parse::<Endpoint>(), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_the_rest() {
        for (s, reason) in [
            (
                "",
                "not inet:tcp:HOST@PORT, LNet NID@NET:12345:PORTAL:TMID or unix:PATH",
            ),
            (
                "tcp://x:1",
                "not inet:tcp:HOST@PORT, LNet NID@NET:12345:PORTAL:TMID or unix:PATH",
            ),
            ("inet:tcp:127.0.0.1", "expected inet:tcp:HOST@PORT"),
            ("inet:tcp:@1", "empty host"),
            ("inet:tcp:h@70000", "bad port"),
            ("unix:", "empty socket path"),
            ("0@lo:12345:34", "expected NID@NET:12345:PORTAL:TMID"),
            ("0@lo:12345:34:101:1", "expected NID@NET:12345:PORTAL:TMID"),
            ("0@lo:999:34:101", "LNet pid must be 12345"),
            ("0:12345:34:101", "NID must be ADDR@NET"),
            ("1@lo:12345:34:101", "NID must be 0@lo or IPV4@tcp"),
            (
                "0@lo:12345:34:*",
                "bad transfer machine id (a number is needed)",
            ),
            ("0@lo:12345:x:1", "bad portal"),
            ("0@lo:12345:34:4000", "portal/tmid give no TCP port"),
        ] {
            let e = s.parse::<Endpoint>().expect_err(s);
            assert_eq!(e.reason, reason, "{s}");
        }
    }
}
