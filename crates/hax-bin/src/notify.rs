//! systemd notifications (`Type=notify`, `WatchdogSec=`): datagrams to
//! `$NOTIFY_SOCKET`.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// Where systemd listens for this service's notifications, if anywhere.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// The socket systemd gave in `$NOTIFY_SOCKET`; none when not run by
    /// systemd.
    pub fn from_env() -> Self {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
        }
    }

    /// A notifier sending to `socket` (a path, or `@name` for an abstract
    /// socket), as systemd would give it.
    pub fn to(socket: impl Into<OsString>) -> Self {
        Notifier {
            socket: Some(socket.into()),
        }
    }

    /// Whether there is anyone to notify.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (e.g. `READY=1`); a no-op without a socket.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    }
}

/// Sends `state` (e.g. `READY=1`) when running under systemd; a no-op
/// otherwise. Abstract sockets (`@name`) are supported.
pub fn notify(state: &str) -> std::io::Result<()> {
    Notifier::from_env().notify(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_the_socket_systemd_gives() {
        let dir = std::env::temp_dir().join(format!("hax-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The only test in this crate that sets the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::notify("READY=1").unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hax-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::Notifier::to(format!("@{name}"))
            .notify("WATCHDOG=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
