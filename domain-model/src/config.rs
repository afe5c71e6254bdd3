//! The domain configuration: one TOML file per domain.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::{DomainName, NameError};

/// Default initial memory in MiB (Qubes' default).
pub const DEFAULT_MEMORY_MIB: u64 = 400;
/// Default number of virtual CPUs (Qubes' default).
pub const DEFAULT_VCPUS: u32 = 2;
/// Accepted memory range in MiB.
pub const MEMORY_RANGE_MIB: std::ops::RangeInclusive<u64> = 32..=1_048_576;
/// Default size of a domain's private volume in MiB (Qubes' default private volume: 2 GiB).
pub const DEFAULT_PRIVATE_SIZE_MIB: u64 = 2048;
/// Accepted private volume sizes in MiB (64 MiB .. 16 TiB).
pub const PRIVATE_SIZE_RANGE_MIB: std::ops::RangeInclusive<u64> = 64..=16 << 20;
/// Accepted vcpu range.
pub const VCPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=256;
/// Most features a domain may carry.
pub const MAX_FEATURES: usize = 256;
/// Longest feature key.
pub const MAX_FEATURE_KEY_LEN: usize = 64;
/// Longest feature value.
pub const MAX_FEATURE_VALUE_LEN: usize = 4096;
/// Largest `dispvm_pool_size` (warm disposables kept per disposable template).
pub const MAX_DISPVM_POOL_SIZE: u32 = 16;

/// A domain's label: the colour of its window borders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Red,
    Orange,
    Yellow,
    Green,
    Gray,
    Blue,
    Purple,
    Black,
}

impl Label {
    /// Every label, from least to most trusted as Qubes orders them.
    pub const ALL: [Label; 8] = [
        Label::Red,
        Label::Orange,
        Label::Yellow,
        Label::Green,
        Label::Gray,
        Label::Blue,
        Label::Purple,
        Label::Black,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Red => "red",
            Label::Orange => "orange",
            Label::Yellow => "yellow",
            Label::Green => "green",
            Label::Gray => "gray",
            Label::Blue => "blue",
            Label::Purple => "purple",
            Label::Black => "black",
        }
    }

    /// The colour as six lowercase hex digits without `#`, e.g. `"cc0000"`.
    pub fn color_hex(self) -> &'static str {
        match self {
            Label::Red => "cc0000",
            Label::Orange => "f57900",
            Label::Yellow => "edd400",
            Label::Green => "73d216",
            Label::Gray => "555555",
            Label::Blue => "3465a4",
            Label::Purple => "75507b",
            Label::Black => "000000",
        }
    }

    /// The colour as `0xRRGGBB`.
    pub fn color_rgb(self) -> u32 {
        match self {
            Label::Red => 0xcc0000,
            Label::Orange => 0xf57900,
            Label::Yellow => 0xedd400,
            Label::Green => 0x73d216,
            Label::Gray => 0x555555,
            Label::Blue => 0x3465a4,
            Label::Purple => 0x75507b,
            Label::Black => 0x000000,
        }
    }
}

/// A domain's class (its role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainClass {
    /// Root from a template, own private volume.
    App,
    /// Provides a root tree to other domains.
    Template,
    /// Own root.
    Standalone,
    /// Its private volume seeds disposables; root from a template.
    DisposableTemplate,
    /// Everything discarded at stop; removed automatically. `template` = its disposable template.
    Disposable,
    /// Service domains (`net`, `usb`); template-based or standalone.
    Service,
}

impl DomainClass {
    pub const ALL: [DomainClass; 6] = [
        DomainClass::App,
        DomainClass::Template,
        DomainClass::Standalone,
        DomainClass::DisposableTemplate,
        DomainClass::Disposable,
        DomainClass::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DomainClass::App => "app",
            DomainClass::Template => "template",
            DomainClass::Standalone => "standalone",
            DomainClass::DisposableTemplate => "disposable-template",
            DomainClass::Disposable => "disposable",
            DomainClass::Service => "service",
        }
    }

    /// What the class says about the `template` property.
    pub fn template_rule(self) -> TemplateRule {
        match self {
            DomainClass::App | DomainClass::DisposableTemplate | DomainClass::Disposable => {
                TemplateRule::Required
            }
            DomainClass::Template | DomainClass::Standalone => TemplateRule::Forbidden,
            DomainClass::Service => TemplateRule::Optional,
        }
    }
}

/// Whether a class needs, forbids or allows a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateRule {
    Required,
    Forbidden,
    Optional,
}

/// How a domain is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces, cgroups, seccomp (the sandbox backend).
    #[default]
    Sandbox,
    /// The embedded KVM monitor.
    Vm,
}

impl Isolation {
    pub const ALL: [Isolation; 2] = [Isolation::Sandbox, Isolation::Vm];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Sandbox => "sandbox",
            Isolation::Vm => "vm",
        }
    }
}

macro_rules! text_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ParseEnumError {
                        what: $what,
                        value: s.to_owned(),
                        expected: <$t>::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }
    };
}

text_enum!(Label, "label");
text_enum!(DomainClass, "class");
text_enum!(Isolation, "isolation");

/// A string that is not one of an enum's accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}; expected one of: {}", expected.join(", "))]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: Vec<&'static str>,
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_private_size() -> u64 {
    DEFAULT_PRIVATE_SIZE_MIB
}
fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

/// One domain's configuration, as stored in `<config>/domains/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: DomainName,
    pub label: Label,
    pub class: DomainClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<DomainName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netvm: Option<DomainName>,
    /// Memory in MiB.
    #[serde(default = "default_memory")]
    pub memory: u64,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Size of the private volume (`/home`, an ext4 image) in MiB: what the domain can keep.
    /// It can grow (at the next start) but not shrink.
    #[serde(default = "default_private_size")]
    pub private_size: u64,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_dispvm: Option<DomainName>,
    #[serde(default)]
    pub autostart: bool,
    /// Disposable templates only: how many disposables domaind keeps started and paused,
    /// ready to hand out (0 = none; bounded by free memory at fill time).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dispvm_pool_size: u32,
    #[serde(default)]
    pub features: BTreeMap<String, String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A cross-field or range rule that a [`DomainConfig`] breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ValidationError {
    /// The offending field (`features.KEY` for a feature).
    pub field: String,
    pub message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Errors of [`DomainConfig::get_property`] / [`DomainConfig::set_property`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("unknown property {name:?}; known properties: {}, features.KEY", PROPERTY_NAMES.join(", "))]
    Unknown { name: String },
    #[error("feature {key:?} is not set")]
    NoSuchFeature { key: String },
    #[error("property {name:?} is read-only")]
    ReadOnly { name: String },
    #[error("property {name:?}: invalid value {value:?}; expected {expected}")]
    InvalidValue {
        name: String,
        value: String,
        expected: String,
    },
    #[error("property {name:?}: {source}")]
    Rejected {
        name: String,
        #[source]
        source: ValidationError,
    },
}

/// Every plain property name, in the order `properties()` lists them (features follow).
pub const PROPERTY_NAMES: &[&str] = &[
    "name",
    "class",
    "label",
    "template",
    "netvm",
    "memory",
    "vcpus",
    "private_size",
    "isolation",
    "default_dispvm",
    "autostart",
    "dispvm_pool_size",
];

/// Prefix of feature properties: `features.KEY`.
pub const FEATURE_PREFIX: &str = "features.";

fn opt_name(v: &Option<DomainName>) -> String {
    v.as_ref().map(|n| n.to_string()).unwrap_or_default()
}

fn validate_feature(key: &str, value: &str) -> Result<(), ValidationError> {
    let field = || format!("features.{key}");
    if key.is_empty() || key.len() > MAX_FEATURE_KEY_LEN {
        return Err(ValidationError::new(
            field(),
            format!("feature keys must be 1..={MAX_FEATURE_KEY_LEN} characters"),
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ValidationError::new(
            field(),
            "feature keys may only contain letters, digits, '_', '.' and '-'",
        ));
    }
    if value.len() > MAX_FEATURE_VALUE_LEN {
        return Err(ValidationError::new(
            field(),
            format!("feature values are limited to {MAX_FEATURE_VALUE_LEN} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ValidationError::new(
            field(),
            "feature values must not contain control characters",
        ));
    }
    Ok(())
}

impl DomainConfig {
    /// A new configuration with default memory, vcpus, isolation, no netvm, no
    /// default_dispvm, no autostart and no features. The label must always be chosen (as
    /// with `qvm-create --label`); `template` must be given for classes that need one.
    pub fn new(
        name: DomainName,
        class: DomainClass,
        label: Label,
        template: Option<DomainName>,
    ) -> Result<Self, ValidationError> {
        let cfg = Self {
            name,
            label,
            class,
            template,
            netvm: None,
            memory: DEFAULT_MEMORY_MIB,
            private_size: DEFAULT_PRIVATE_SIZE_MIB,
            vcpus: DEFAULT_VCPUS,
            isolation: Isolation::default(),
            default_dispvm: None,
            autostart: false,
            dispvm_pool_size: 0,
            features: BTreeMap::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the rules that serde cannot: template presence per class, ranges, self
    /// references and feature limits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (self.class.template_rule(), &self.template) {
            (TemplateRule::Required, None) => {
                return Err(ValidationError::new(
                    "template",
                    format!("a domain of class {} needs a template", self.class),
                ))
            }
            (TemplateRule::Forbidden, Some(t)) => {
                return Err(ValidationError::new(
                    "template",
                    format!(
                    "a domain of class {} has its own root and cannot have a template (got {t:?})",
                    self.class
                ),
                ))
            }
            _ => {}
        }
        if self.template.as_ref() == Some(&self.name) {
            return Err(ValidationError::new(
                "template",
                "a domain cannot be its own template",
            ));
        }
        if self.netvm.as_ref() == Some(&self.name) {
            return Err(ValidationError::new(
                "netvm",
                "a domain cannot be its own netvm",
            ));
        }
        if !MEMORY_RANGE_MIB.contains(&self.memory) {
            return Err(ValidationError::new(
                "memory",
                format!(
                    "{} MiB is out of range {}..={} MiB",
                    self.memory,
                    MEMORY_RANGE_MIB.start(),
                    MEMORY_RANGE_MIB.end()
                ),
            ));
        }
        if !PRIVATE_SIZE_RANGE_MIB.contains(&self.private_size) {
            return Err(ValidationError::new(
                "private_size",
                format!(
                    "{} MiB is out of range {}..={} MiB",
                    self.private_size,
                    PRIVATE_SIZE_RANGE_MIB.start(),
                    PRIVATE_SIZE_RANGE_MIB.end()
                ),
            ));
        }
        if !VCPUS_RANGE.contains(&self.vcpus) {
            return Err(ValidationError::new(
                "vcpus",
                format!(
                    "{} is out of range {}..={}",
                    self.vcpus,
                    VCPUS_RANGE.start(),
                    VCPUS_RANGE.end()
                ),
            ));
        }
        if self.dispvm_pool_size > MAX_DISPVM_POOL_SIZE {
            return Err(ValidationError::new(
                "dispvm_pool_size",
                format!(
                    "{} is out of range 0..={MAX_DISPVM_POOL_SIZE}",
                    self.dispvm_pool_size
                ),
            ));
        }
        if self.dispvm_pool_size > 0 && self.class != DomainClass::DisposableTemplate {
            return Err(ValidationError::new(
                "dispvm_pool_size",
                format!(
                    "only a disposable-template keeps a pool of disposables; this domain is of class {}",
                    self.class
                ),
            ));
        }
        if self.features.len() > MAX_FEATURES {
            return Err(ValidationError::new(
                "features",
                format!(
                    "{} features; at most {MAX_FEATURES} are allowed",
                    self.features.len()
                ),
            ));
        }
        for (k, v) in &self.features {
            validate_feature(k, v)?;
        }
        Ok(())
    }

    /// Serialize to the TOML text stored on disk.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// One property as text. Unset optional references are `""`; booleans `true`/`false`.
    pub fn get_property(&self, key: &str) -> Result<String, PropertyError> {
        Ok(match key {
            "name" => self.name.to_string(),
            "class" => self.class.to_string(),
            "label" => self.label.to_string(),
            "template" => opt_name(&self.template),
            "netvm" => opt_name(&self.netvm),
            "memory" => self.memory.to_string(),
            "vcpus" => self.vcpus.to_string(),
            "private_size" => self.private_size.to_string(),
            "isolation" => self.isolation.to_string(),
            "default_dispvm" => opt_name(&self.default_dispvm),
            "autostart" => self.autostart.to_string(),
            "dispvm_pool_size" => self.dispvm_pool_size.to_string(),
            _ => match key.strip_prefix(FEATURE_PREFIX) {
                Some(f) => self
                    .features
                    .get(f)
                    .cloned()
                    .ok_or_else(|| PropertyError::NoSuchFeature { key: f.to_owned() })?,
                None => {
                    return Err(PropertyError::Unknown {
                        name: key.to_owned(),
                    })
                }
            },
        })
    }

    /// Set one property from text, keeping the configuration valid: on any error nothing
    /// changes. `name` and `class` are read-only. `""` for `template`, `netvm` or
    /// `default_dispvm` means none. `features.KEY` with `""` removes the feature.
    pub fn set_property(&mut self, key: &str, value: &str) -> Result<(), PropertyError> {
        let invalid = |expected: &str| PropertyError::InvalidValue {
            name: key.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        let opt_name = |value: &str| -> Result<Option<DomainName>, PropertyError> {
            if value.is_empty() {
                return Ok(None);
            }
            DomainName::new(value)
                .map(Some)
                .map_err(|e: NameError| invalid(&format!("a domain name or \"\" for none ({e})")))
        };
        let mut next = self.clone();
        match key {
            "name" | "class" => {
                return Err(PropertyError::ReadOnly {
                    name: key.to_owned(),
                })
            }
            "label" => {
                next.label = value.parse().map_err(|e: ParseEnumError| {
                    invalid(&format!("one of: {}", e.expected.join(", ")))
                })?
            }
            "template" => next.template = opt_name(value)?,
            "netvm" => next.netvm = opt_name(value)?,
            "default_dispvm" => next.default_dispvm = opt_name(value)?,
            "memory" => {
                next.memory = value.parse().map_err(|_| {
                    invalid(&format!(
                        "an integer number of MiB in {}..={}",
                        MEMORY_RANGE_MIB.start(),
                        MEMORY_RANGE_MIB.end()
                    ))
                })?
            }
            "private_size" => {
                next.private_size = value.parse().map_err(|_| {
                    invalid(&format!(
                        "an integer number of MiB in {}..={}",
                        PRIVATE_SIZE_RANGE_MIB.start(),
                        PRIVATE_SIZE_RANGE_MIB.end()
                    ))
                })?
            }
            "vcpus" => {
                next.vcpus = value.parse().map_err(|_| {
                    invalid(&format!(
                        "an integer in {}..={}",
                        VCPUS_RANGE.start(),
                        VCPUS_RANGE.end()
                    ))
                })?
            }
            "isolation" => {
                next.isolation = value.parse().map_err(|e: ParseEnumError| {
                    invalid(&format!("one of: {}", e.expected.join(", ")))
                })?
            }
            "autostart" => {
                next.autostart = match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    _ => return Err(invalid("true or false")),
                }
            }
            "dispvm_pool_size" => {
                next.dispvm_pool_size = value
                    .parse()
                    .map_err(|_| invalid(&format!("an integer in 0..={MAX_DISPVM_POOL_SIZE}")))?
            }
            _ => match key.strip_prefix(FEATURE_PREFIX) {
                Some(f) => {
                    if value.is_empty() {
                        next.features.remove(f);
                    } else {
                        next.features.insert(f.to_owned(), value.to_owned());
                    }
                }
                None => {
                    return Err(PropertyError::Unknown {
                        name: key.to_owned(),
                    })
                }
            },
        }
        next.validate().map_err(|source| PropertyError::Rejected {
            name: key.to_owned(),
            source,
        })?;
        *self = next;
        Ok(())
    }

    /// Every property as text, features as `features.KEY`.
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for key in PROPERTY_NAMES {
            if let Ok(v) = self.get_property(key) {
                out.insert((*key).to_owned(), v);
            }
        }
        for (k, v) in &self.features {
            out.insert(format!("{FEATURE_PREFIX}{k}"), v.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    fn app() -> DomainConfig {
        DomainConfig::new(
            n("work"),
            DomainClass::App,
            Label::Blue,
            Some(n("debian-12")),
        )
        .unwrap()
    }

    #[test]
    fn label_colours() {
        let want = [
            ("red", "cc0000"),
            ("orange", "f57900"),
            ("yellow", "edd400"),
            ("green", "73d216"),
            ("gray", "555555"),
            ("blue", "3465a4"),
            ("purple", "75507b"),
            ("black", "000000"),
        ];
        for (name, hex) in want {
            let l: Label = name.parse().unwrap();
            assert_eq!(l.color_hex(), hex);
            assert_eq!(format!("{:06x}", l.color_rgb()), hex);
            assert_eq!(l.to_string(), name);
        }
        let e = "pink".parse::<Label>().unwrap_err().to_string();
        assert!(e.contains("pink") && e.contains("purple"), "{e}");
    }

    #[test]
    fn class_template_rules() {
        for class in DomainClass::ALL {
            let with = DomainConfig::new(n("x"), class, Label::Red, Some(n("t")));
            let without = DomainConfig::new(n("x"), class, Label::Red, None);
            match class.template_rule() {
                TemplateRule::Required => {
                    assert!(with.is_ok());
                    assert_eq!(without.unwrap_err().field, "template");
                }
                TemplateRule::Forbidden => {
                    assert_eq!(with.unwrap_err().field, "template");
                    assert!(without.is_ok());
                }
                TemplateRule::Optional => {
                    assert!(with.is_ok() && without.is_ok());
                }
            }
        }
        assert!(
            DomainConfig::new(n("x"), DomainClass::App, Label::Red, Some(n("x"))).is_err(),
            "own template"
        );
    }

    #[test]
    fn defaults() {
        let c = app();
        assert_eq!(c.memory, 400);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.isolation, Isolation::Sandbox);
        assert!(!c.autostart);
    }

    #[test]
    fn ranges() {
        let mut c = app();
        for (m, ok) in [
            (31, false),
            (32, true),
            (1_048_576, true),
            (1_048_577, false),
        ] {
            c.memory = m;
            assert_eq!(c.validate().is_ok(), ok, "memory {m}");
        }
        c.memory = 400;
        for (v, ok) in [(0, false), (1, true), (256, true), (257, false)] {
            c.vcpus = v;
            assert_eq!(c.validate().is_ok(), ok, "vcpus {v}");
        }
    }

    #[test]
    fn get_set_properties() {
        let mut c = app();
        c.set_property("label", "green").unwrap();
        assert_eq!(c.get_property("label").unwrap(), "green");
        c.set_property("memory", "1024").unwrap();
        assert_eq!(c.memory, 1024);
        c.set_property("vcpus", "4").unwrap();
        c.set_property("netvm", "net").unwrap();
        assert_eq!(c.get_property("netvm").unwrap(), "net");
        c.set_property("netvm", "").unwrap();
        assert_eq!(c.netvm, None);
        assert_eq!(c.get_property("netvm").unwrap(), "");
        c.set_property("default_dispvm", "debian-12-dvm").unwrap();
        c.set_property("isolation", "vm").unwrap();
        assert_eq!(c.isolation, Isolation::Vm);
        c.set_property("autostart", "true").unwrap();
        assert!(c.autostart);
        c.set_property("features.gui-scale", "2").unwrap();
        assert_eq!(c.get_property("features.gui-scale").unwrap(), "2");
        let props = c.properties();
        assert_eq!(props["features.gui-scale"], "2");
        assert_eq!(props["class"], "app");
        assert_eq!(props["name"], "work");
        assert_eq!(props.len(), PROPERTY_NAMES.len() + 1);
        c.set_property("features.gui-scale", "").unwrap();
        assert!(matches!(
            c.get_property("features.gui-scale"),
            Err(PropertyError::NoSuchFeature { .. })
        ));
    }

    #[test]
    fn property_errors_name_property_and_accepted_values() {
        let mut c = app();
        let before = c.clone();
        let e = c.set_property("label", "pink").unwrap_err().to_string();
        assert!(e.contains("label") && e.contains("purple"), "{e}");
        let e = c.set_property("memory", "lots").unwrap_err().to_string();
        assert!(e.contains("memory") && e.contains("32..=1048576"), "{e}");
        let e = c.set_property("memory", "16").unwrap_err().to_string();
        assert!(e.contains("memory") && e.contains("out of range"), "{e}");
        let e = c.set_property("vcpus", "-1").unwrap_err().to_string();
        assert!(e.contains("vcpus"), "{e}");
        let e = c.set_property("isolation", "jail").unwrap_err().to_string();
        assert!(e.contains("sandbox") && e.contains("vm"), "{e}");
        let e = c.set_property("template", "").unwrap_err().to_string();
        assert!(
            e.contains("template") && e.contains("needs a template"),
            "{e}"
        );
        let e = c.set_property("netvm", "dom0").unwrap_err().to_string();
        assert!(e.contains("netvm") && e.contains("reserved"), "{e}");
        let e = c.set_property("netvm", "work").unwrap_err().to_string();
        assert!(e.contains("own netvm"), "{e}");
        assert!(matches!(
            c.set_property("name", "x"),
            Err(PropertyError::ReadOnly { .. })
        ));
        assert!(matches!(
            c.set_property("class", "template"),
            Err(PropertyError::ReadOnly { .. })
        ));
        let e = c.set_property("colour", "red").unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("label"), "{e}");
        let e = c.set_property("features.a b", "1").unwrap_err().to_string();
        assert!(e.contains("features.a b"), "{e}");
        let e = c
            .set_property("autostart", "maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("true or false"), "{e}");
        assert_eq!(c, before, "failed sets must not change anything");
    }

    #[test]
    fn dispvm_pool_size_only_on_disposable_templates() {
        let mut dvm = DomainConfig::new(
            n("dvm"),
            DomainClass::DisposableTemplate,
            Label::Red,
            Some(n("debian-12")),
        )
        .unwrap();
        assert_eq!(dvm.get_property("dispvm_pool_size").unwrap(), "0");
        dvm.set_property("dispvm_pool_size", "3").unwrap();
        assert_eq!(dvm.dispvm_pool_size, 3);
        let text = dvm.to_toml().unwrap();
        assert!(text.contains("dispvm_pool_size = 3"), "{text}");
        let back: DomainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, dvm);
        let e = dvm
            .set_property("dispvm_pool_size", "17")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0..=16"), "{e}");
        let e = dvm
            .set_property("dispvm_pool_size", "-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0..=16"), "{e}");
        let mut a = app();
        let e = a
            .set_property("dispvm_pool_size", "1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disposable-template"), "{e}");
        a.set_property("dispvm_pool_size", "0").unwrap();
        // 0 is not written, so files of older versions and new ones look alike
        assert!(!a.to_toml().unwrap().contains("dispvm_pool_size"));
    }

    #[test]
    fn toml_round_trip() {
        let mut c = app();
        c.set_property("netvm", "net").unwrap();
        c.set_property("features.x", "y z").unwrap();
        let text = c.to_toml().unwrap();
        let back: DomainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let t =
            DomainConfig::new(n("debian-12"), DomainClass::Template, Label::Black, None).unwrap();
        let back: DomainConfig = toml::from_str(&t.to_toml().unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn contract_example_parses() {
        let text = r#"
name = "work"
label = "blue"
class = "app"
template = "debian-12"
netvm = "net"
memory = 400
vcpus = 2
isolation = "sandbox"
default_dispvm = "debian-12-dvm"
autostart = false
[features]
"#;
        let c: DomainConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.default_dispvm.unwrap(), "debian-12-dvm");
    }
}
