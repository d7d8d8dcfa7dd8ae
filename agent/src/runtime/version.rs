//! Which `slipway:plugin` API versions this host accepts.
//!
//! A plugin's API version is read from the names of the `slipway:plugin`
//! interfaces it imports and exports (`slipway:plugin/plugin@0.1.0`), before
//! anything is instantiated, so an incompatible plugin is refused with both
//! versions named instead of failing with a linker error. Compatibility is
//! Cargo's caret rule: same major, and for 0.x the same minor.

use semver::Version;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The API version of `wit/` this host implements.
pub const HOST_API: Version = Version::new(0, 1, 0);

/// The API version a component was built against, from its interface names.
pub fn component_api(engine: &Engine, component: &Component) -> Result<Version, String> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()));
    let mut found: Option<Version> = None;
    for name in names {
        let Some(rest) = name.strip_prefix("slipway:plugin/") else {
            continue;
        };
        let Some((_, version)) = rest.split_once('@') else {
            return Err(format!("interface `{name}` has no version"));
        };
        let version =
            Version::parse(version).map_err(|e| format!("interface `{name}`: bad version: {e}"))?;
        match &found {
            Some(v) if *v != version => {
                return Err(format!(
                    "mixes slipway:plugin API versions {v} and {version}"
                ));
            }
            _ => found = Some(version),
        }
    }
    found.ok_or_else(|| "exports no slipway:plugin interface: not a Slipway plugin".to_string())
}

/// Whether a plugin built for `api` runs on this host.
pub fn compatible(api: &Version) -> bool {
    semver::VersionReq {
        comparators: vec![semver::Comparator {
            op: semver::Op::Caret,
            major: HOST_API.major,
            minor: Some(HOST_API.minor),
            patch: Some(0),
            pre: semver::Prerelease::EMPTY,
        }],
    }
    .matches(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_rule_on_zero_major() {
        assert!(compatible(&Version::new(0, 1, 0)));
        assert!(compatible(&Version::new(0, 1, 7)));
        assert!(!compatible(&Version::new(0, 2, 0)));
        assert!(!compatible(&Version::new(1, 1, 0)));
    }
}
