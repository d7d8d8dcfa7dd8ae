//! The `url` of an app's `source`: what the config checks it for, and how it
//! may be shown. The download itself is the agent's (`slipway::artifact`).

use url::Url;

/// What a URL source is checked for when the config is read: http or https,
/// a host, and a file name at the end of the path (it decides how the file
/// is unpacked). The message shows the URL redacted.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("`{}` is not a URL: {e}", redact_url(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{}` is not an http or https URL", redact_url(url)));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{}` has no host", redact_url(url)));
    }
    if file_name(&parsed).is_none() {
        return Err(format!(
            "`{}` does not end in a file name (like …/app-1.2.0.tar.gz)",
            redact_url(url)
        ));
    }
    Ok(())
}

/// The URL as it may be logged or recorded: no user, no password, and the
/// query (often a signature or token) replaced by `?…`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return "(an unparsable URL)".into();
    };
    let had_query = parsed.query().is_some();
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    parsed.set_query(None);
    parsed.set_fragment(None);
    let mut shown = parsed.to_string();
    if had_query {
        shown.push_str("?…");
    }
    shown
}

/// The last segment of the URL's path, as written: the name a plain file
/// gets in the release directory, and what says whether it is an archive.
pub fn file_name(url: &Url) -> Option<String> {
    let name = url.path_segments()?.next_back()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}
