//! Where and how the HTTP server listens: `http.bind` (an address or a
//! host name, with a port), or, when it is not set, where the original hax
//! listened: the host name of the node of the local `hax` catalog service
//! and the port of its `http_port` meta (8008 without it); hare's watches,
//! its SNS rules and `hctl` call `<node>:<http_port>`. HTTPS when hare's
//! `ssl/hax` says `https` and its certificate and key files exist, as the
//! original.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use hax_consul::schema::HaxKv;
use hax_consul::server::TlsConfig;
use hax_consul::ConsulClient;
use hax_ha::view::identity::{self, IdentityError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The original's port when the `hax` service has no `http_port` meta.
pub const DEFAULT_PORT: u16 = 8008;

/// Why the HTTP server has no address or certificate to listen with.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The host does not resolve.
    #[error("cannot resolve {bind} ({from}): {source}")]
    Resolve {
        /// What was to be resolved.
        bind: BindAddr,
        /// Where it came from.
        from: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Consul could not tell.
    #[error("cannot read the hax catalog service for http.bind: {0}")]
    Catalog(#[source] IdentityError),
    /// `ssl/hax` could not be read.
    #[error("cannot read ssl/hax: {0}")]
    Ssl(#[source] hax_consul::schema::SchemaError),
    /// `ssl/hax`'s certificate or key cannot be served.
    #[error("ssl/hax: {0}")]
    Tls(#[source] hax_consul::server::TlsError),
}

/// Where the HTTP server listens, and what said so (for messages):
/// `http.bind`, the `hax` catalog service of `node`, or the default. With
/// `catalog_needed` (the identity comes from that service too), a service
/// not registered yet, or Consul not answering, is waited for as the
/// identity is, every `retry`, until `cancel` (`Ok(None)`); without it, no
/// service means the default.
pub async fn address(
    bind: Option<&BindAddr>,
    client: &ConsulClient,
    node: &str,
    catalog_needed: bool,
    retry: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<(SocketAddr, &'static str)>, ListenError> {
    let (bind, from) = match bind {
        Some(b) => (b.clone(), "http.bind"),
        None => loop {
            match identity::catalog_http_address(client, node).await {
                Ok((host, port)) => {
                    break (
                        BindAddr::new(host, port.unwrap_or(DEFAULT_PORT)),
                        "the hax catalog service's node and http_port",
                    )
                }
                // Identity given in the settings, no catalog service to ask.
                Err(IdentityError::NoHaxService(_)) if !catalog_needed => {
                    break (
                        BindAddr::new("127.0.0.1", DEFAULT_PORT),
                        "the default: no hax catalog service",
                    )
                }
                Err(e) if catalog_needed => {
                    tracing::warn!(error = %e, "where to listen for HTTP is not known yet; retrying");
                }
                Err(e) => return Err(ListenError::Catalog(e)),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(retry) => {}
            }
        },
    };
    let addr = bind
        .resolve()
        .await
        .map_err(|source| ListenError::Resolve {
            bind: bind.clone(),
            from,
            source,
        })?;
    Ok(Some((addr, from)))
}

/// The certificate to answer HTTPS with, when `ssl/hax` asks for https:
/// its files missing mean plain HTTP with a warning, as the original.
pub async fn tls(kv: &HaxKv) -> Result<Option<TlsConfig>, ListenError> {
    let Some(ssl) = kv.ssl_config().await.map_err(ListenError::Ssl)? else {
        return Ok(None);
    };
    if !ssl.http_protocol.eq_ignore_ascii_case("https") {
        return Ok(None);
    }
    let (cert, key) = (Path::new(&ssl.cert_path), Path::new(&ssl.key_path));
    if !cert.is_file() || !key.is_file() {
        tracing::warn!(
            cert = %cert.display(),
            key = %key.display(),
            "ssl/hax asks for https but its certificate or key file is missing: plain HTTP"
        );
        return Ok(None);
    }
    TlsConfig::from_pem_files(cert, key)
        .map(Some)
        .map_err(ListenError::Tls)
}

/// `host:port`, the host an IP address (IPv6 in brackets) or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindAddr {
    host: String,
    port: u16,
}

impl BindAddr {
    /// `host` and `port`; an IPv6 address without brackets is accepted.
    pub fn new(host: impl Into<String>, port: u16) -> BindAddr {
        let host: String = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or(host);
        BindAddr { host, port }
    }

    /// The host, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address to bind: the host's first IPv4 address, else its first
    /// address. A name is resolved as the system resolves it.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let all: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        all.iter()
            .find(|a| a.is_ipv4())
            .or_else(|| all.first())
            .copied()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} has no address", self.host),
                )
            })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BindAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: the port {port:?} is not a number from 0 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(rest) => rest
                .strip_suffix(']')
                .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| format!("{s:?}: expected [IPv6 address]:port"))?,
            None if host.contains(':') => {
                return Err(format!(
                    "{s:?}: an IPv6 address goes in brackets: [addr]:port"
                ))
            }
            None => host,
        };
        let valid_name = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if host.parse::<IpAddr>().is_err() && !valid_name(host) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a host name"
            ));
        }
        Ok(BindAddr::new(host, port))
    }
}

impl From<SocketAddr> for BindAddr {
    fn from(a: SocketAddr) -> Self {
        BindAddr::new(a.ip().to_string(), a.port())
    }
}

impl Serialize for BindAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_and_print_back() {
        for text in [
            "127.0.0.1:8008",
            "[::1]:9",
            "srvnode-1.data.private:8008",
            "vm:0",
        ] {
            let b: BindAddr = text.parse().unwrap();
            assert_eq!(b.to_string(), text);
        }
        let b: BindAddr = "[::1]:9".parse().unwrap();
        assert_eq!(b.host(), "::1");
        for bad in [
            "8008",
            "host:",
            "host:70000",
            "::1:8008",
            "[nope]:1",
            ":8008",
            "a b:1",
            "x..y:1",
        ] {
            assert!(bad.parse::<BindAddr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_an_ipv4_address_first() {
        let b: BindAddr = "localhost:8008".parse().unwrap();
        let a = b.resolve().await.expect("localhost resolves");
        assert!(a.ip().is_loopback() && a.is_ipv4(), "{a}");
        assert_eq!(a.port(), 8008);
        let ip: BindAddr = "[::1]:1".parse().unwrap();
        assert_eq!(ip.resolve().await.unwrap(), "[::1]:1".parse().unwrap());
    }
}
