//! Template recipes: declarative TOML describing a Debian root tree built with mmdebstrap.
//!
//! A recipe has no shell: every step the builder runs is derived from validated fields, so a
//! recipe cannot smuggle commands into the (root) build.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bulkhead_domain::DomainName;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Version of the builder's output format. Bump it whenever the builder changes what it
/// produces for the same recipe: every cached template is then rebuilt.
pub const BUILDER_FORMAT_VERSION: u32 = 2;

/// Recipe `format` values this builder understands.
pub const SUPPORTED_RECIPE_FORMATS: &[u32] = &[1];

/// Suites a recipe may name.
pub const ALLOWED_SUITES: &[&str] = &["bookworm", "trixie"];

/// mmdebstrap variants a recipe may use.
pub const ALLOWED_VARIANTS: &[&str] = &[
    "essential",
    "apt",
    "minbase",
    "required",
    "important",
    "standard",
];

/// Archive components a recipe may use.
pub const ALLOWED_COMPONENTS: &[&str] = &["main", "contrib", "non-free", "non-free-firmware"];

/// Largest recipe file accepted.
pub const MAX_RECIPE_BYTES: u64 = 256 * 1024;
/// Most packages (all groups together).
pub const MAX_PACKAGES: usize = 2000;
/// Longest Debian package name accepted.
pub const MAX_PACKAGE_NAME_LEN: usize = 128;

/// Errors loading or validating a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: recipe is {size} bytes; at most {MAX_RECIPE_BYTES} are accepted", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), field.as_ref().map(|f| format!(": field `{f}`")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        field: Option<String>,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: field `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl RecipeError {
    /// The field concerned, if known.
    pub fn field(&self) -> Option<&str> {
        match self {
            RecipeError::Parse { field, .. } => field.as_deref(),
            RecipeError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The default user created in the template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// An optional package group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageGroup {
    /// Installed only when true.
    #[serde(default)]
    pub enabled: bool,
    pub packages: Vec<String>,
}

/// What a VM domain boots besides the tree: see [`crate::vm`]. Nothing here goes into the
/// tree; the kernel and busybox packages are fetched and unpacked on the side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Debian package of the guest kernel; a metapackage (`linux-image-cloud-amd64`) is
    /// followed to the versioned package it depends on.
    pub kernel_package: String,
    /// Debian package with a static `/bin/busybox` for the initramfs.
    #[serde(default = "default_busybox")]
    pub busybox_package: String,
    /// Kernel modules the initramfs loads (their dependencies are added from modules.dep).
    pub modules: Vec<String>,
    /// Free space in the root image beyond the tree, MiB (the guest mounts it read-only under
    /// a tmpfs overlay, so this only matters for tools that check free space).
    #[serde(default = "default_root_free")]
    pub root_image_free_mib: u64,
}

fn default_busybox() -> String {
    "busybox-static".to_owned()
}

fn default_root_free() -> u64 {
    64
}

/// Most modules a recipe may name.
pub const MAX_VM_MODULES: usize = 64;

/// The parsed recipe file. See `templates/recipes/debian-12.toml` for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    pub format: u32,
    pub name: DomainName,
    #[serde(default)]
    pub description: String,
    pub suite: String,
    pub variant: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub groups: BTreeMap<String, PackageGroup>,
    pub hostname: String,
    pub user: UserSpec,
    /// Leave out documentation, man pages and translations (copyright files stay).
    #[serde(default)]
    pub exclude_docs: bool,
    /// Remove apt's caches and package lists, and the build's logs, from the tree.
    #[serde(default = "yes")]
    pub clean: bool,
    #[serde(default)]
    pub vm: Option<VmSpec>,
}

fn default_components() -> Vec<String> {
    vec!["main".to_owned()]
}

fn yes() -> bool {
    true
}

/// A validated recipe with the bytes it came from and its cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub spec: RecipeSpec,
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
    /// sha256 (hex) over the builder format version and the recipe bytes.
    hash: String,
}

/// Check a Debian package name (Debian Policy 5.6.1: lowercase letters, digits, `+`, `-`,
/// `.`; at least two characters; starts with a letter or digit).
pub fn validate_package_name(name: &str) -> Result<(), String> {
    if name.len() < 2 || name.len() > MAX_PACKAGE_NAME_LEN {
        return Err(format!(
            "package name {name:?} must be 2..={MAX_PACKAGE_NAME_LEN} characters"
        ));
    }
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(format!(
            "package name {name:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(*c)))
    {
        return Err(format!(
            "package name {name:?} contains {c:?}; Debian package names use only a-z, 0-9, '+', '-' and '.'"
        ));
    }
    Ok(())
}

fn is_hostname_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// An absolute path of plain components (`/a/b`), no `.`/`..`, no odd characters.
fn is_plain_abs_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 256
        && s[1..].split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-+".contains(ch))
        })
}

impl Recipe {
    /// Load `<dir>/<name>.toml`; the recipe's `name` must equal `name`.
    pub fn load_named(dir: &Path, name: &DomainName) -> Result<Self, RecipeError> {
        let path = dir.join(format!("{name}.toml"));
        let recipe = Self::load(&path)?;
        if recipe.spec.name != *name {
            return Err(RecipeError::Invalid {
                path,
                field: "name".into(),
                message: format!(
                    "the file is named for template {name:?} but says name = {:?}",
                    recipe.spec.name.as_str()
                ),
            });
        }
        Ok(recipe)
    }

    /// Load and validate a recipe file.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let io = |action: &'static str| {
            let path = path.to_owned();
            move |source| RecipeError::Io {
                path,
                action,
                source,
            }
        };
        let file = File::open(path).map_err(io("cannot open recipe"))?;
        let mut bytes = Vec::new();
        file.take(MAX_RECIPE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io("cannot read recipe"))?;
        if bytes.len() as u64 > MAX_RECIPE_BYTES {
            return Err(RecipeError::TooLarge {
                path: path.to_owned(),
                size: bytes.len() as u64,
            });
        }
        Self::from_bytes(path, &bytes)
    }

    /// Parse and validate recipe bytes; `path` is used for messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, RecipeError> {
        let text = std::str::from_utf8(bytes).map_err(|e| RecipeError::Parse {
            path: path.to_owned(),
            field: None,
            line: None,
            message: format!("recipe is not valid UTF-8: {e}"),
        })?;
        let de = toml::Deserializer::new(text);
        let spec: RecipeSpec = serde_path_to_error::deserialize(de).map_err(|err| {
            let at = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            RecipeError::Parse {
                path: path.to_owned(),
                field: (at != "." && !at.is_empty()).then_some(at),
                line,
                message: inner.message().trim().to_owned(),
            }
        })?;
        validate(path, &spec)?;
        let mut h = Sha256::new();
        h.update(b"bulkhead-template-builder\0");
        h.update(BUILDER_FORMAT_VERSION.to_le_bytes());
        h.update(bytes);
        let hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            spec,
            path: path.to_owned(),
            hash,
        })
    }

    /// The template's name.
    pub fn name(&self) -> &DomainName {
        &self.spec.name
    }

    /// The cache key: sha256 hex over the builder format version and the recipe bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The first 16 hex digits of [`hash`](Self::hash), used in directory names.
    pub fn short_hash(&self) -> &str {
        &self.hash[..16]
    }

    /// Every package to install into the tree: `packages` and enabled groups (the `[vm]`
    /// packages are not installed into the tree).
    pub fn all_packages(&self) -> Vec<String> {
        let mut out: Vec<String> = self.spec.packages.clone();
        for g in self.spec.groups.values().filter(|g| g.enabled) {
            out.extend(g.packages.iter().cloned());
        }
        out.sort();
        out.dedup();
        out
    }
}

fn validate(path: &Path, s: &RecipeSpec) -> Result<(), RecipeError> {
    let bad = |field: &str, message: String| RecipeError::Invalid {
        path: path.to_owned(),
        field: field.to_owned(),
        message,
    };
    if !SUPPORTED_RECIPE_FORMATS.contains(&s.format) {
        return Err(bad(
            "format",
            format!(
                "recipe format {} is not supported by this builder (supported: {SUPPORTED_RECIPE_FORMATS:?})",
                s.format
            ),
        ));
    }
    if !ALLOWED_SUITES.contains(&s.suite.as_str()) {
        return Err(bad(
            "suite",
            format!(
                "suite {:?} is not allowed; expected one of: {}",
                s.suite,
                ALLOWED_SUITES.join(", ")
            ),
        ));
    }
    if !ALLOWED_VARIANTS.contains(&s.variant.as_str()) {
        return Err(bad(
            "variant",
            format!(
                "variant {:?} is not allowed; expected one of: {}",
                s.variant,
                ALLOWED_VARIANTS.join(", ")
            ),
        ));
    }
    if s.components.is_empty() {
        return Err(bad("components", "at least one component is needed".into()));
    }
    for c in &s.components {
        if !ALLOWED_COMPONENTS.contains(&c.as_str()) {
            return Err(bad(
                "components",
                format!(
                    "component {c:?} is not allowed; expected some of: {}",
                    ALLOWED_COMPONENTS.join(", ")
                ),
            ));
        }
    }
    let mut count = 0usize;
    let mut check_list = |field: String, list: &[String]| -> Result<(), RecipeError> {
        for p in list {
            validate_package_name(p).map_err(|m| bad(&field, m))?;
        }
        count += list.len();
        if count > MAX_PACKAGES {
            return Err(bad(&field, format!("more than {MAX_PACKAGES} packages")));
        }
        Ok(())
    };
    check_list("packages".into(), &s.packages)?;
    for (name, g) in &s.groups {
        if !is_hostname_label(name) {
            return Err(bad(
                &format!("groups.{name}"),
                "group names use only letters, digits and '-'".into(),
            ));
        }
        check_list(format!("groups.{name}.packages"), &g.packages)?;
    }
    if let Some(vm) = &s.vm {
        validate_package_name(&vm.kernel_package).map_err(|m| bad("vm.kernel_package", m))?;
        validate_package_name(&vm.busybox_package).map_err(|m| bad("vm.busybox_package", m))?;
        if vm.modules.is_empty() || vm.modules.len() > MAX_VM_MODULES {
            return Err(bad(
                "vm.modules",
                format!("name 1..={MAX_VM_MODULES} kernel modules"),
            ));
        }
        for m in &vm.modules {
            let ok = !m.is_empty()
                && m.len() <= 64
                && m.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(bad(
                    "vm.modules",
                    format!("{m:?} is not a module name (a-z, 0-9, '_', '-'; at most 64)"),
                ));
            }
        }
        if vm.root_image_free_mib > 1 << 20 {
            return Err(bad(
                "vm.root_image_free_mib",
                "at most 1048576 (1 TiB)".into(),
            ));
        }
    }
    if !is_hostname_label(&s.hostname) {
        return Err(bad(
            "hostname",
            format!(
                "{:?} is not a host name (1..=63 letters, digits, '-')",
                s.hostname
            ),
        ));
    }
    let u = &s.user;
    if !is_user_name(&u.name) {
        return Err(bad(
            "user.name",
            format!(
                "{:?} is not a valid user name (lowercase letters, digits, '_', '-'; at most 32)",
                u.name
            ),
        ));
    }
    if u.name == "root" {
        return Err(bad("user.name", "the default user cannot be root".into()));
    }
    for (field, id) in [("user.uid", u.uid), ("user.gid", u.gid)] {
        if !(1000..=59999).contains(&id) {
            return Err(bad(
                field,
                format!("{id} is outside the regular user range 1000..=59999"),
            ));
        }
    }
    if !is_plain_abs_path(&u.home) || !u.home.starts_with("/home/") {
        return Err(bad(
            "user.home",
            format!(
                "{:?} must be a plain absolute path under /home (the private volume is mounted on /home)",
                u.home
            ),
        ));
    }
    if !is_plain_abs_path(&u.shell) {
        return Err(bad(
            "user.shell",
            format!("{:?} must be a plain absolute path", u.shell),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
format = 1
name = "t-1"
suite = "bookworm"
variant = "minbase"
packages = ["ca-certificates", "libstdc++6", "g++-12"]
hostname = "localhost"
[user]
name = "user"
uid = 1000
gid = 1000
home = "/home/user"
shell = "/bin/bash"
[groups.gui]
packages = ["foot"]
"#;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::from_bytes(Path::new("r.toml"), text.as_bytes())
    }

    #[test]
    fn good_recipe() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.name().as_str(), "t-1");
        assert!(r.spec.clean, "clean defaults to true");
        assert_eq!(r.spec.components, vec!["main"]);
        assert_eq!(
            r.all_packages(),
            vec!["ca-certificates", "g++-12", "libstdc++6"],
            "disabled groups are not installed"
        );
        let with_gui =
            parse(&GOOD.replace("[groups.gui]", "[groups.gui]\nenabled = true")).unwrap();
        assert!(with_gui.all_packages().contains(&"foot".to_owned()));
    }

    #[test]
    fn shipped_debian_12_recipe_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        let r = Recipe::load_named(&dir, &DomainName::new("debian-12").unwrap()).unwrap();
        assert_eq!(r.spec.suite, "bookworm");
        assert_eq!(r.spec.user.uid, 1000);
        assert_eq!(r.spec.user.home, "/home/user");
        let vm = r.spec.vm.as_ref().expect("the recipe boots VM domains");
        assert_eq!(vm.kernel_package, "linux-image-amd64");
        for m in ["virtio_mmio", "vhci_hcd", "usb_storage"] {
            assert!(vm.modules.iter().any(|x| x == m), "{m}");
        }
        assert!(
            !r.all_packages()
                .iter()
                .any(|p| p.starts_with("linux-image")),
            "the guest kernel is not installed into the tree"
        );
    }

    #[test]
    fn hash_is_stable_and_content_addressed() {
        let a = parse(GOOD).unwrap();
        let b = parse(GOOD).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.short_hash().len(), 16);
        let c = parse(&GOOD.replace("\"foot\"", "\"weston\"")).unwrap();
        assert_ne!(a.hash(), c.hash());
        let mut h = Sha256::new();
        h.update(b"bulkhead-template-builder\0");
        h.update(BUILDER_FORMAT_VERSION.to_le_bytes());
        h.update(GOOD.as_bytes());
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.hash(), want);
    }

    #[test]
    fn package_names() {
        for ok in [
            "ca-certificates",
            "g++",
            "libc6",
            "0ad",
            "libstdc++6",
            "python3.11",
        ] {
            validate_package_name(ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "Foo",
            "-x",
            "foo bar",
            "foo;rm",
            "foo_bar",
            "foo:amd64",
            "foo=1.0",
            "$(x)",
        ] {
            assert!(validate_package_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_recipes_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("suite = \"bookworm\"", "suite = \"sid\"", "suite"),
            ("variant = \"minbase\"", "variant = \"custom\"", "variant"),
            ("\"g++-12\"", "\"G++\"", "packages"),
            (
                "packages = [\"foot\"]",
                "packages = [\"foot;reboot\"]",
                "groups.gui.packages",
            ),
            ("hostname = \"localhost\"", "hostname = \"a b\"", "hostname"),
            ("name = \"user\"", "name = \"root\"", "user.name"),
            ("uid = 1000", "uid = 0", "user.uid"),
            ("home = \"/home/user\"", "home = \"/root\"", "user.home"),
            (
                "home = \"/home/user\"",
                "home = \"/home/../etc\"",
                "user.home",
            ),
            (
                "shell = \"/bin/bash\"",
                "shell = \"/bin/bash; id\"",
                "user.shell",
            ),
            ("format = 1", "format = 2", "format"),
            ("format = 1", "format = 1\nmirror = \"x\"", "mirror"),
            ("uid = 1000", "uid = \"1000\"", "user.uid"),
            ("name = \"t-1\"", "name = \"dom0\"", "name"),
            (
                "[groups.gui]",
                "[vm]\nkernel_package = \"linux image\"\nmodules = [\"virtio\"]\n[groups.gui]",
                "vm.kernel_package",
            ),
            (
                "[groups.gui]",
                "[vm]\nkernel_package = \"linux-image-cloud-amd64\"\nmodules = [\"../x\"]\n[groups.gui]",
                "vm.modules",
            ),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field(), Some(*field), "{to}: {e}");
            assert!(e.to_string().contains("r.toml"), "{e}");
        }
    }

    #[test]
    fn file_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.toml");
        std::fs::write(&p, vec![b'#'; MAX_RECIPE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            Recipe::load(&p),
            Err(RecipeError::TooLarge { .. })
        ));
        let missing = Recipe::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(missing.to_string().contains("nope.toml"));
        std::fs::write(dir.path().join("other.toml"), GOOD).unwrap();
        let e = Recipe::load_named(dir.path(), &DomainName::new("other").unwrap()).unwrap_err();
        assert_eq!(e.field(), Some("name"));
    }
}
