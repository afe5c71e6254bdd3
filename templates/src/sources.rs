//! The host's apt sources, filtered to one suite, as a deb822 file for mmdebstrap.
//!
//! We never name a mirror ourselves: the template is built from the archives the host's apt
//! already uses (one-line `sources.list`/`*.list` and deb822 `*.sources` files). Only `deb`
//! entries for the recipe's suite and its `-updates`/`-security` suites are kept, so
//! third-party repositories configured on the host do not leak into templates.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::TemplateError;

/// Largest sources file read.
const MAX_SOURCES_BYTES: u64 = 1024 * 1024;

/// One apt source entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Other deb822 fields kept as they are (`Signed-By`, `Architectures`, ...), key and
    /// value (continuation lines included).
    pub options: Vec<(String, String)>,
}

impl AptSource {
    fn to_deb822(&self) -> String {
        let mut s = String::from("Types: deb\n");
        s.push_str(&format!("URIs: {}\n", self.uris.join(" ")));
        s.push_str(&format!("Suites: {}\n", self.suites.join(" ")));
        s.push_str(&format!("Components: {}\n", self.components.join(" ")));
        for (k, v) in &self.options {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s
    }
}

/// The suites that belong to `suite`.
fn wanted_suites(suite: &str) -> [String; 3] {
    [
        suite.to_owned(),
        format!("{suite}-updates"),
        format!("{suite}-security"),
    ]
}

/// Parse deb822 `.sources` text into `deb` entries (disabled and `deb-src`-only stanzas skipped).
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n").flat_map(|s| s.split("\n\r\n")) {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(line);
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let words = |key: &str| -> Vec<String> {
            get(key)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if get("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        let src = AptSource {
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            options: fields
                .iter()
                .filter(|(k, _)| {
                    !["types", "uris", "suites", "components", "enabled"]
                        .contains(&k.to_ascii_lowercase().as_str())
                })
                .cloned()
                .collect(),
        };
        if !src.uris.is_empty() && !src.suites.is_empty() {
            out.push(src);
        }
    }
    out
}

/// Parse one-line `sources.list` text into `deb` entries.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let mut options = Vec::new();
        let rest = if let Some(opts) = rest.strip_prefix('[') {
            let Some((inner, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in inner.split_whitespace() {
                if let Some((k, v)) = opt.split_once('=') {
                    let key = match k {
                        "signed-by" => "Signed-By",
                        "arch" => "Architectures",
                        "trusted" => "Trusted",
                        "lang" => "Languages",
                        _ => continue,
                    };
                    options.push((key.to_owned(), v.replace(',', " ")));
                }
            }
            after.trim_start()
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uris: vec![uri.to_owned()],
            suites: vec![suite.to_owned()],
            components: words.map(str::to_owned).collect(),
            options,
        });
    }
    out
}

fn read_small(path: &Path) -> Result<String, TemplateError> {
    use std::io::Read;
    let f = fs::File::open(path).map_err(TemplateError::io(path, "cannot open apt sources"))?;
    let mut s = String::new();
    f.take(MAX_SOURCES_BYTES)
        .read_to_string(&mut s)
        .map_err(TemplateError::io(path, "cannot read apt sources"))?;
    Ok(s)
}

/// Collect the host's `deb` sources under `etc_apt` (normally `/etc/apt`) for `suite` and
/// render them as one deb822 document. Errors when none serve the suite.
pub fn host_sources_for_suite(etc_apt: &Path, suite: &str) -> Result<String, TemplateError> {
    let mut files: Vec<PathBuf> = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let dir = etc_apt.join("sources.list.d");
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("list" | "sources")
                    )
            })
            .collect();
        names.sort();
        files.extend(names);
    }
    let wanted = wanted_suites(suite);
    let mut out = String::new();
    for file in &files {
        let text = read_small(file)?;
        let entries = if file.extension().and_then(|e| e.to_str()) == Some("sources") {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        for mut e in entries {
            e.suites.retain(|s| wanted.contains(s));
            if e.suites.is_empty() {
                continue;
            }
            if e.components.is_empty() {
                e.components.push("main".into());
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("# from {}\n", file.display()));
            out.push_str(&e.to_deb822());
        }
    }
    if out.is_empty() {
        return Err(TemplateError::NoAptSources {
            suite: suite.to_owned(),
            searched: if files.is_empty() {
                vec![etc_apt.join("sources.list"), dir]
            } else {
                files
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_filtering() {
        let text = "Types: deb deb-src\n# comment\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates trixie\nComponents: main contrib\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb\nURIs: http://b.example/x\nSuites: bookworm\nComponents: main\nEnabled: no\n";
        let e = parse_deb822(text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].suites, vec!["bookworm", "bookworm-updates", "trixie"]);
        assert_eq!(e[0].components, vec!["main", "contrib"]);
        assert_eq!(
            e[0].options,
            vec![("Signed-By".into(), "/usr/share/keyrings/k.gpg".into())]
        );
    }

    #[test]
    fn one_line() {
        let text = "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main # c\n# deb http://x bookworm main\ndeb-src http://a bookworm main\ndeb http://s.example/sec bookworm-security main non-free-firmware\n";
        let e = parse_one_line(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].uris, vec!["http://a.example/debian"]);
        assert_eq!(
            e[0].options,
            vec![
                ("Architectures".into(), "amd64".into()),
                ("Signed-By".into(), "/k.gpg".into())
            ]
        );
        assert_eq!(e[1].components, vec!["main", "non-free-firmware"]);
    }

    #[test]
    fn host_collection_keeps_only_the_suite() {
        let d = tempfile::tempdir().unwrap();
        let apt = d.path();
        fs::create_dir_all(apt.join("sources.list.d")).unwrap();
        fs::write(
            apt.join("sources.list"),
            "deb http://one.example/debian bookworm main\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://two.example/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/vendor.sources"),
            "Types: deb\nURIs: https://vendor.example/apt\nSuites: nodistro\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/x.list.disabled"),
            "deb http://three.example bookworm main\n",
        )
        .unwrap();
        let out = host_sources_for_suite(apt, "bookworm").unwrap();
        assert!(out.contains("URIs: http://one.example/debian\nSuites: bookworm\n"));
        assert!(
            out.contains("URIs: http://two.example/debian-security\nSuites: bookworm-security\n")
        );
        assert!(!out.contains("vendor") && !out.contains("three"), "{out}");
        let again = parse_deb822(&out);
        assert_eq!(again.len(), 2);
        let e = host_sources_for_suite(apt, "trixie").unwrap_err();
        assert!(matches!(e, TemplateError::NoAptSources { .. }));
        assert!(e.to_string().contains("trixie"));
    }
}
