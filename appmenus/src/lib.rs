//! Application menus (Qubes' `qvm-appmenus`): the applications a user chose for each domain
//! (the domain feature `menu-items`: desktop ids separated by spaces), from those its
//! template provides (`ListApplications`), as XDG desktop entries in dom0's menu directory
//! (`$XDG_DATA_HOME/applications`, `~/.local/share/applications`), named
//! `bulkhead-<domain>+<id>`, titled `[domain] Name`. An entry runs
//! `bulkhead app DOMAIN ID`, i.e. `RunApplication`, which starts only the template's own
//! entry of that id in that domain: nothing in an entry is a command line from a domain.
//! A disposable template's entries start a new disposable (`@dispvm:NAME`).
//!
//! [`plan`] computes the entries from what domaind says; [`apply`] writes them and removes the
//! generated entries of domains and applications that are gone; [`sync`] does both from a
//! domaind connection (the CLI's `appmenus --sync`, and dom0-ui as domains change). Names from a template are
//! cut to [`MAX_NAME`] characters without control characters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulkhead_api::DomainInfo;

/// The domain feature listing the chosen desktop ids.
pub const FEATURE: &str = "menu-items";
/// Prefix of every generated entry's file name.
pub const FILE_PREFIX: &str = "bulkhead-";
/// Key marking an entry as generated (only those are ever removed).
pub const GENERATED_KEY: &str = "X-Bulkhead-Generated";
/// Longest application name shown.
pub const MAX_NAME: usize = 80;

/// Errors of the menu directory.
#[derive(Debug, thiserror::Error)]
pub enum AppMenuError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("desktop id {0:?} is not a plain file name ending in .desktop")]
    BadId(String),
    #[error("no menu directory: neither XDG_DATA_HOME nor HOME is set")]
    NoMenuDir,
    #[error("asking domaind: {0}")]
    Domaind(#[from] bulkhead_api::Error),
}

/// dom0's menu directory: `$XDG_DATA_HOME/applications`, else `$HOME/.local/share/applications`.
pub fn menu_dir() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("applications"))
}

/// A desktop id as an entry may name it: `[A-Za-z0-9_.-]`, ends in `.desktop`.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 255
        && id.len() > ".desktop".len()
        && id.ends_with(".desktop")
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A display name from a template, safe for a desktop entry value.
pub fn clean_name(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    let s = s.trim().to_owned();
    if s.is_empty() {
        "(unnamed)".into()
    } else {
        s
    }
}

/// Whether `class` gets a menu (not disposables themselves: they come and go).
pub fn has_menu(class: &str) -> bool {
    matches!(
        class,
        "app" | "template" | "standalone" | "service" | "disposable-template"
    )
}

/// One entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuEntry {
    pub file: String,
    pub text: String,
}

/// The entry of application `id` (named `name` by the template) for `domain`.
pub fn render(
    domain: &DomainInfo,
    id: &str,
    name: &str,
    bulkhead: &str,
) -> Result<MenuEntry, AppMenuError> {
    if !valid_id(id) {
        return Err(AppMenuError::BadId(id.to_owned()));
    }
    let dispvm = domain.class == "disposable-template";
    let (title, target) = if dispvm {
        (
            format!("[disposable from {}]", domain.name),
            format!("@dispvm:{}", domain.name),
        )
    } else {
        (format!("[{}]", domain.name), domain.name.clone())
    };
    let name = clean_name(name);
    let text = format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name={title} {name}\n\
         Comment={name} in domain {}, {} label\n\
         Exec={bulkhead} app {target} {id}\n\
         Icon=applications-other\n\
         Categories=X-Bulkhead;X-Bulkhead-{};\n\
         X-Bulkhead-Domain={}\n\
         {GENERATED_KEY}=true\n",
        domain.name, domain.label, domain.name, domain.name
    );
    Ok(MenuEntry {
        // '+' is in neither a domain name nor a desktop id: no two entries share a file.
        file: format!("{FILE_PREFIX}{}+{id}", domain.name),
        text,
    })
}

/// The entries of every domain: `chosen` (domain -> its `menu-items`), `apps` (domain ->
/// (id, name) its template provides). A chosen id the template does not provide is skipped
/// (reported in the second list).
pub fn plan(
    domains: &[DomainInfo],
    chosen: &BTreeMap<String, Vec<String>>,
    apps: &BTreeMap<String, Vec<(String, String)>>,
    bulkhead: &str,
) -> (Vec<MenuEntry>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for d in domains.iter().filter(|d| has_menu(&d.class)) {
        let Some(ids) = chosen.get(&d.name) else {
            continue;
        };
        let provided = apps.get(&d.name).map(Vec::as_slice).unwrap_or(&[]);
        for id in ids {
            match provided.iter().find(|(i, _)| i == id) {
                Some((_, name)) => match render(d, id, name, bulkhead) {
                    Ok(e) => out.push(e),
                    Err(e) => missing.push(format!("{}: {e}", d.name)),
                },
                None => missing.push(format!(
                    "{}: {id} is not an application of its template",
                    d.name
                )),
            }
        }
    }
    (out, missing)
}

/// What [`apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AppMenuError + '_ {
    move |source| AppMenuError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `entries` into `dir` (each atomically, only when changed) and removes every other
/// generated entry there (ours only: the prefix and the generated key).
pub fn apply(dir: &Path, entries: &[MenuEntry]) -> Result<Applied, AppMenuError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut done = Applied::default();
    for e in entries {
        let path = dir.join(&e.file);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(e.text.as_str()) {
            continue;
        }
        // per process: dom0-ui and the CLI may rewrite the menu at the same moment
        let tmp = dir.join(format!(".{}.{}.tmp", e.file, std::process::id()));
        std::fs::write(&tmp, &e.text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        done.written.push(e.file.clone());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(FILE_PREFIX) || entries.iter().any(|e| e.file == name) {
            continue;
        }
        let path = entry.path();
        let generated = std::fs::read_to_string(&path)
            .is_ok_and(|t| t.lines().any(|l| l == format!("{GENERATED_KEY}=true")));
        if generated {
            std::fs::remove_file(&path).map_err(io(&path))?;
            done.removed.push(name);
        }
    }
    Ok(done)
}

/// `features.menu-items` of `name` as desktop ids.
pub async fn menu_items(
    proxy: &bulkhead_api::Domaind1Proxy<'_>,
    name: &str,
) -> Result<Vec<String>, AppMenuError> {
    let props = proxy.get_properties(name).await?;
    Ok(props
        .get(&format!("features.{FEATURE}"))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Rewrites this user's menu entries of every domain from what domaind says now; entries
/// run `bulkhead` (the CLI's path). Returns what changed and the chosen ids that could not
/// be shown (reasons, one per id).
pub async fn sync(
    proxy: &bulkhead_api::Domaind1Proxy<'_>,
    bulkhead: &str,
) -> Result<(Applied, Vec<String>), AppMenuError> {
    let dir = menu_dir().ok_or(AppMenuError::NoMenuDir)?;
    let domains = proxy.list().await?;
    let mut chosen = BTreeMap::new();
    let mut apps = BTreeMap::new();
    let mut missing = Vec::new();
    for d in domains.iter().filter(|d| has_menu(&d.class)) {
        // a domain removed since the list has no menu; anything else is a failure
        let ids = match menu_items(proxy, &d.name).await {
            Ok(ids) => ids,
            Err(AppMenuError::Domaind(bulkhead_api::Error::NoSuchDomain(_))) => continue,
            Err(e) => return Err(e),
        };
        if ids.is_empty() {
            continue;
        }
        let provided = match proxy.list_applications(&d.name).await {
            Ok(list) => list.into_iter().map(|(id, name, _)| (id, name)).collect(),
            Err(e) => {
                missing.push(format!("{}: no applications listed: {e}", d.name));
                Vec::new()
            }
        };
        chosen.insert(d.name.clone(), ids);
        apps.insert(d.name.clone(), provided);
    }
    let (entries, more) = plan(&domains, &chosen, &apps, bulkhead);
    missing.extend(more);
    Ok((apply(&dir, &entries)?, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(name: &str, class: &str) -> DomainInfo {
        DomainInfo {
            name: name.into(),
            class: class.into(),
            state: "halted".into(),
            label: "blue".into(),
            isolation: "sandbox".into(),
            memory_mib: 400,
            vcpus: 2,
            template: "debian-12".into(),
            netvm: String::new(),
        }
    }

    #[test]
    fn entries_run_only_the_domains_own_applications() {
        let domains = [
            dom("work", "app"),
            dom("dvm", "disposable-template"),
            dom("disp1", "disposable"),
        ];
        let chosen = BTreeMap::from([
            (
                "work".to_owned(),
                vec!["foot.desktop".to_owned(), "gone.desktop".to_owned()],
            ),
            ("dvm".to_owned(), vec!["foot.desktop".to_owned()]),
            ("disp1".to_owned(), vec!["foot.desktop".to_owned()]),
        ]);
        let foot = vec![("foot.desktop".to_owned(), "Foot\nExec=rm -rf ~".to_owned())];
        let apps = BTreeMap::from([("work".to_owned(), foot.clone()), ("dvm".to_owned(), foot)]);
        let (entries, missing) = plan(&domains, &chosen, &apps, "/usr/local/bin/bulkhead");
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(
            missing,
            vec!["work: gone.desktop is not an application of its template"]
        );
        let work = &entries[0];
        assert_eq!(work.file, "bulkhead-work+foot.desktop");
        assert!(
            work.text.contains("\nName=[work] FootExec=rm -rf ~\n"),
            "{}",
            work.text
        );
        assert!(work
            .text
            .contains("\nExec=/usr/local/bin/bulkhead app work foot.desktop\n"));
        assert_eq!(
            work.text.lines().filter(|l| l.starts_with("Exec=")).count(),
            1,
            "one Exec line: the name stays on its own line"
        );
        assert!(entries[1]
            .text
            .contains("Exec=/usr/local/bin/bulkhead app @dispvm:dvm foot.desktop"));
        assert!(entries[1].text.contains("Name=[disposable from dvm] Foot"));
        assert!(matches!(
            render(&dom("work", "app"), "../x.desktop", "x", "b"),
            Err(AppMenuError::BadId(_))
        ));
    }

    #[test]
    fn apply_writes_and_removes_only_generated_entries() {
        let d = tempfile::tempdir().unwrap();
        let (entries, _) = plan(
            &[dom("work", "app")],
            &BTreeMap::from([("work".to_owned(), vec!["a.desktop".to_owned()])]),
            &BTreeMap::from([(
                "work".to_owned(),
                vec![("a.desktop".to_owned(), "A".to_owned())],
            )]),
            "bulkhead",
        );
        std::fs::write(
            d.path().join("bulkhead-old-b.desktop"),
            format!("[Desktop Entry]\n{GENERATED_KEY}=true\n"),
        )
        .unwrap();
        std::fs::write(
            d.path().join("bulkhead-mine.desktop"),
            "[Desktop Entry]\nName=mine\n",
        )
        .unwrap();
        std::fs::write(d.path().join("firefox.desktop"), "[Desktop Entry]\n").unwrap();
        let done = apply(d.path(), &entries).unwrap();
        assert_eq!(done.written, vec!["bulkhead-work+a.desktop"]);
        assert_eq!(done.removed, vec!["bulkhead-old-b.desktop"]);
        assert!(
            d.path().join("bulkhead-mine.desktop").exists(),
            "not ours: kept"
        );
        assert!(d.path().join("firefox.desktop").exists());
        assert_eq!(
            apply(d.path(), &entries).unwrap(),
            Applied::default(),
            "nothing to do twice"
        );
        assert_eq!(
            apply(d.path(), &[]).unwrap().removed,
            vec!["bulkhead-work+a.desktop"]
        );
    }
}
