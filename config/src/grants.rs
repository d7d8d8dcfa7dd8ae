//! What a plugin may touch, as written in its config `grants` table.
//!
//! Everything defaults to nothing: no directories, no hosts, no programs, no
//! env, no secrets. A grant becomes one explicit capability when a step's
//! sandbox is built; there is no other way in.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// The `grants` table of `[plugins.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Directories preopened at the same path inside the sandbox.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// `host:port` patterns outgoing HTTP may reach (`*` as port = any).
    #[serde(default)]
    pub http: Vec<HostPattern>,
    /// `host:port` patterns raw TCP may connect to.
    #[serde(default)]
    pub tcp: Vec<HostPattern>,
    /// Programs `exec` may run: bare names (looked up in `PATH`) or
    /// absolute paths.
    #[serde(default)]
    pub exec: Vec<String>,
    /// Environment variables visible to the plugin and to programs it runs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets the plugin may read with `secret(name)`.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// One directory grant; read-only unless `write = true`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub path: PathBuf,
    #[serde(default)]
    pub write: bool,
}

impl Grants {
    /// The exec grant admits `program` (exact name or exact absolute path).
    pub fn allows_exec(&self, program: &str) -> bool {
        self.exec.iter().any(|p| p == program)
    }

    /// The directory grant that contains `path`, if any (paths are compared
    /// component-wise after normalisation, so `..` cannot escape).
    pub fn dir_containing(&self, path: &std::path::Path) -> Option<&DirGrant> {
        let path = normalize(path)?;
        self.dirs.iter().find(|d| match normalize(&d.path) {
            Some(root) => path.starts_with(root),
            None => false,
        })
    }
}

/// Lexically normalise an absolute path: drop `.`, resolve `..`. Relative
/// paths are refused (None): a grant check must never depend on a cwd.
pub fn normalize(path: &std::path::Path) -> Option<PathBuf> {
    use std::path::Component;
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
        }
    }
    Some(out)
}

/// A `host:port` pattern: host is a name, an IP, `*`, or `*.suffix`; port is
/// a number or `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p),
            _ => return Err(format!("`{text}`: expected host:port (port may be `*`)")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{text}`: port `{p}` is not a number or `*`"))?,
            ),
        };
        if host.contains('*')
            && host != "*"
            && !(host.starts_with("*.") && host[2..].find('*').is_none())
        {
            return Err(format!(
                "`{text}`: `*` may only be the whole host or a `*.` prefix"
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether this pattern admits `host` on `port`.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }

    /// Whether the pattern names the destination by IP (or `localhost`), so
    /// a loopback or private address is what the operator asked for.
    pub fn names_address(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok()
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HostPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}:*", self.host),
        }
    }
}

/// Addresses a host *name* must never resolve to unless the grant names the
/// address itself: loopback, private, link-local (cloud metadata) and
/// unspecified. Stops a granted name from being pointed at the VM's insides.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn host_patterns_match_host_and_port() {
        let p = HostPattern::parse("127.0.0.1:*").unwrap();
        assert!(p.matches("127.0.0.1", 8080));
        assert!(!p.matches("127.0.0.2", 8080));
        let p = HostPattern::parse("*.example.com:443").unwrap();
        assert!(p.matches("api.Example.com", 443));
        assert!(!p.matches("example.com", 443));
        assert!(!p.matches("api.example.com", 80));
        assert!(!p.matches("evil-example.com", 443));
        let p = HostPattern::parse("[::1]:8080").unwrap();
        assert!(p.matches("[::1]", 8080));
        assert!(HostPattern::parse("*:*").unwrap().matches("anything", 1));
    }

    #[test]
    fn bad_host_patterns_say_why() {
        assert!(
            HostPattern::parse("example.com")
                .unwrap_err()
                .contains("host:port")
        );
        assert!(
            HostPattern::parse("h:http")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(HostPattern::parse("a*b.com:1").unwrap_err().contains("`*`"));
    }

    #[test]
    fn dir_grants_cannot_be_escaped_with_dotdot() {
        let g = Grants {
            dirs: vec![DirGrant {
                path: "/srv/app".into(),
                write: false,
            }],
            ..Default::default()
        };
        assert!(g.dir_containing(Path::new("/srv/app/releases/1")).is_some());
        assert!(g.dir_containing(Path::new("/srv/app/../../etc")).is_none());
        assert!(g.dir_containing(Path::new("/srv/application")).is_none());
        assert!(g.dir_containing(Path::new("relative")).is_none());
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
