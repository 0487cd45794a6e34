//! The environment hare gives its hax: `HARE_HAX_NODE_NAME` and the Consul
//! CLI's `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL` and `CONSUL_HTTP_TOKEN`. A
//! node set up by hare runs hax with them, so hax takes them as it takes its
//! own variables: over the configuration file, under the `HAX_*` variables
//! and the options, which win where both are set.

use hax_consul::{AclToken, ConsulConfig};

use crate::config::{Config, Origin};

/// hare's name for the local node (`hax.py` reads it before anything else).
pub const NODE_NAME: &str = "HARE_HAX_NODE_NAME";
/// The Consul agent's address, `host:port` or a URL.
pub const CONSUL_ADDR: &str = "CONSUL_HTTP_ADDR";
/// `true` (or `1`, `yes`): a bare `host:port` address is reached over https.
pub const CONSUL_SSL: &str = "CONSUL_HTTP_SSL";
/// The Consul ACL token itself (not a file).
pub const CONSUL_TOKEN: &str = "CONSUL_HTTP_TOKEN";

/// Sets in `c` what hare's variables (read through `lookup`) say, for each
/// setting that `given` (the setting's key: set by its own variable or
/// option) says is not set otherwise. Returns the settings set, with the
/// variable each came from, for error messages.
pub fn apply(
    c: &mut Config,
    given: impl Fn(&'static str) -> bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, Origin)> {
    let mut set = Vec::new();
    let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    if !given("identity.node") {
        if let Some(node) = var(NODE_NAME) {
            c.identity.node = Some(node.trim().to_owned());
            set.push(("identity.node", Origin::Env(NODE_NAME)));
        }
    }
    let ssl = var(CONSUL_SSL)
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    if !given("consul.address") && (var(CONSUL_ADDR).is_some() || ssl) {
        // The Consul CLI's own reading of the pair, scheme and default port
        // included (`ConsulConfig::from_lookup`).
        let from_env = ConsulConfig::from_lookup(|name| match name {
            CONSUL_ADDR | CONSUL_SSL => var(name),
            _ => None,
        });
        c.consul.address = from_env.address;
        let origin = if var(CONSUL_ADDR).is_some() {
            CONSUL_ADDR
        } else {
            CONSUL_SSL
        };
        set.push(("consul.address", Origin::Env(origin)));
    }
    set
}

/// The Consul token `CONSUL_HTTP_TOKEN` gives, for a configuration that
/// names no token file (the file, a hax setting, wins).
pub fn consul_token(lookup: impl Fn(&str) -> Option<String>) -> Option<AclToken> {
    lookup(CONSUL_TOKEN)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(AclToken::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn hare_variables_set_what_nothing_else_set() {
        let mut c = Config::default();
        let set = apply(
            &mut c,
            |_| false,
            env(&[
                (NODE_NAME, "srvnode-1.data.private"),
                (CONSUL_ADDR, "10.0.0.7:8500"),
                (CONSUL_SSL, "true"),
            ]),
        );
        assert_eq!(c.identity.node.as_deref(), Some("srvnode-1.data.private"));
        assert_eq!(c.consul.address, "https://10.0.0.7:8500");
        assert_eq!(
            set,
            vec![
                ("identity.node", Origin::Env(NODE_NAME)),
                ("consul.address", Origin::Env(CONSUL_ADDR)),
            ]
        );
    }

    #[test]
    fn hax_settings_win() {
        let mut c = Config::default();
        c.identity.node = Some("mine".into());
        c.consul.address = "http://127.0.0.1:9500".into();
        let set = apply(
            &mut c,
            |_| true,
            env(&[(NODE_NAME, "hare's"), (CONSUL_ADDR, "10.0.0.7:8500")]),
        );
        assert!(set.is_empty());
        assert_eq!(c.identity.node.as_deref(), Some("mine"));
        assert_eq!(c.consul.address, "http://127.0.0.1:9500");
    }

    #[test]
    fn ssl_alone_selects_consuls_https_port_and_blanks_count_as_unset() {
        let mut c = Config::default();
        apply(
            &mut c,
            |_| false,
            env(&[(CONSUL_SSL, "1"), (NODE_NAME, " ")]),
        );
        assert_eq!(c.consul.address, "https://127.0.0.1:8501");
        assert_eq!(c.identity.node, None);
        let mut c = Config::default();
        apply(&mut c, |_| false, env(&[(CONSUL_ADDR, "http://h:1")]));
        assert_eq!(c.consul.address, "http://h:1");
        // `false` changes nothing: the file's address stays.
        let mut c = Config::default();
        c.consul.address = "http://10.0.0.9:8500".into();
        assert!(apply(&mut c, |_| false, env(&[(CONSUL_SSL, "false")])).is_empty());
        assert_eq!(c.consul.address, "http://10.0.0.9:8500");
    }

    #[test]
    fn the_token_is_taken_as_given() {
        assert_eq!(
            consul_token(env(&[(CONSUL_TOKEN, " s3cr3t\n")])),
            Some(AclToken::new("s3cr3t"))
        );
        assert_eq!(consul_token(env(&[(CONSUL_TOKEN, "")])), None);
        assert_eq!(consul_token(env(&[])), None);
    }
}
