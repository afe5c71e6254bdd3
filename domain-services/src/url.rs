//! URL checks for `bulkhead.OpenURL`: http and https only, parsed by the `url` crate.

/// Longest URL accepted (bytes).
pub const MAX_URL_BYTES: usize = 8192;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("empty URL")]
    Empty,
    #[error("URL is {0} bytes long; at most {MAX_URL_BYTES} are allowed")]
    TooLong(usize),
    #[error("URL contains whitespace or control characters")]
    Control,
    #[error("not a URL: {0}")]
    Parse(String),
    #[error("only http and https URLs can be opened, not {0}:")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
}

/// Checks `raw` and returns the URL in its normalised form (what the browser is given).
pub fn check_url(raw: &str) -> Result<String, UrlError> {
    if raw.is_empty() {
        return Err(UrlError::Empty);
    }
    if raw.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong(raw.len()));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::Control);
    }
    let u = url::Url::parse(raw).map_err(|e| UrlError::Parse(e.to_string()))?;
    match u.scheme() {
        "http" | "https" => {}
        other => {
            let mut s = other.to_string();
            s.truncate(32);
            return Err(UrlError::Scheme(s));
        }
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    Ok(u.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(
            check_url("https://example.org/a?b=c#d").unwrap(),
            "https://example.org/a?b=c#d"
        );
        assert_eq!(
            check_url("HTTP://Example.ORG").unwrap(),
            "http://example.org/"
        );
        for (bad, want) in [
            ("file:///etc/passwd", "not file:"),
            ("javascript:alert(1)", "not javascript:"),
            ("ftp://example.org/", "not ftp:"),
            ("data:text/html,hi", "not data:"),
            ("-new-window", "not a URL"),
            ("/etc/passwd", "not a URL"),
            ("https://exa mple.org", "whitespace"),
            ("https://example.org/\n--x", "whitespace"),
            ("", "empty"),
        ] {
            let e = check_url(bad).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(check_url(&format!("https://e.org/{}", "a".repeat(9000))).is_err());
    }
}
