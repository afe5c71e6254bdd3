//! The system facts a decision needs, supplied by the caller (domaind) as a snapshot, and
//! the request being decided.

use std::collections::{BTreeSet, HashMap};

use bulkhead_domain::{DomainClass, DomainConfig, DomainName};

/// The name dom0 (the admin domain, `@adminvm`) has in policies and in resolutions.
pub const ADMINVM_NAME: &str = "dom0";
/// dom0's UUID: `uuid:00000000-0000-0000-0000-000000000000` means `@adminvm`, as in Qubes.
pub const DOM0_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Every value `@type:` accepts, for error messages.
pub const TYPE_NAMES_HELP: &str = "app, template, standalone, disposable-template, disposable, \
     service, admin, or Qubes' AppVM, TemplateVM, StandaloneVM, DispVM, AdminVM, RemoteVM";

/// What a domain is, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: DomainName,
    pub class: DomainClass,
    pub tags: BTreeSet<String>,
    /// Whether it is running now (matters for `autostart=no`).
    pub running: bool,
    /// Disposable template used for `@dispvm` requests from this domain.
    pub default_dispvm: Option<DomainName>,
    /// Whether disposables may be created from it (`@dispvm:NAME`). Defaults to true for
    /// the disposable-template class.
    pub template_for_dispvms: bool,
    /// Qubes' `internal` feature: never offered as an `ask` target.
    pub internal: bool,
    /// Lower-case 8-4-4-4-12 UUID, if the domain has one (`uuid:` tokens); [`Self::with_uuid`]
    /// lower-cases it, as Qubes reports UUIDs.
    pub uuid: Option<String>,
}

impl DomainInfo {
    pub fn new(name: DomainName, class: DomainClass) -> Self {
        Self {
            name,
            class,
            tags: BTreeSet::new(),
            running: false,
            default_dispvm: None,
            template_for_dispvms: class == DomainClass::DisposableTemplate,
            internal: false,
            uuid: None,
        }
    }

    /// Policy facts from a domain's configuration: name, class, `default_dispvm`, and the
    /// `internal` feature (`1`, `yes` or `true`). Tags and UUID are added by the caller.
    pub fn from_config(cfg: &DomainConfig, running: bool) -> Self {
        let internal = cfg
            .features
            .get("internal")
            .is_some_and(|v| matches!(v.as_str(), "1" | "yes" | "true"));
        let mut info = Self::new(cfg.name.clone(), cfg.class)
            .with_running(running)
            .with_internal(internal);
        info.default_dispvm = cfg.default_dispvm.clone();
        info
    }

    pub fn with_tag(mut self, tag: &str) -> Self {
        self.tags.insert(tag.to_owned());
        self
    }

    pub fn with_running(mut self, running: bool) -> Self {
        self.running = running;
        self
    }

    pub fn with_default_dispvm(mut self, template: DomainName) -> Self {
        self.default_dispvm = Some(template);
        self
    }

    pub fn with_template_for_dispvms(mut self, yes: bool) -> Self {
        self.template_for_dispvms = yes;
        self
    }

    pub fn with_internal(mut self, yes: bool) -> Self {
        self.internal = yes;
        self
    }

    pub fn with_uuid(mut self, uuid: &str) -> Self {
        self.uuid = Some(uuid.to_ascii_lowercase());
        self
    }
}

/// A snapshot of the domains, their tags, classes, running state and dispvm settings.
/// dom0 is always present (it is not a [`DomainInfo`]: its name is reserved).
#[derive(Debug, Clone, Default)]
pub struct System {
    domains: HashMap<DomainName, DomainInfo>,
    by_uuid: HashMap<String, DomainName>,
    dom0_tags: BTreeSet<String>,
    dom0_default_dispvm: Option<DomainName>,
}

impl System {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a domain.
    pub fn insert(&mut self, info: DomainInfo) {
        if let Some(old) = self.domains.get(&info.name) {
            if let Some(u) = &old.uuid {
                self.by_uuid.remove(u);
            }
        }
        if let Some(u) = &info.uuid {
            self.by_uuid.insert(u.clone(), info.name.clone());
        }
        self.domains.insert(info.name.clone(), info);
    }

    /// Builder form of [`System::insert`].
    pub fn with(mut self, info: DomainInfo) -> Self {
        self.insert(info);
        self
    }

    pub fn domain(&self, name: &str) -> Option<&DomainInfo> {
        self.domains.get(name)
    }

    pub fn domains(&self) -> impl Iterator<Item = &DomainInfo> {
        self.domains.values()
    }

    /// The domain with this UUID, compared as written (as Qubes does): domains' UUIDs are
    /// lower case, so an upper-case spelling finds nothing.
    pub fn domain_by_uuid(&self, uuid: &str) -> Option<&DomainInfo> {
        self.by_uuid.get(uuid).and_then(|n| self.domains.get(n))
    }

    pub fn set_dom0_tags(&mut self, tags: BTreeSet<String>) {
        self.dom0_tags = tags;
    }

    pub fn dom0_tags(&self) -> &BTreeSet<String> {
        &self.dom0_tags
    }

    /// The disposable template for `@dispvm` calls made by dom0 (Qubes' global default).
    pub fn set_dom0_default_dispvm(&mut self, template: Option<DomainName>) {
        self.dom0_default_dispvm = template;
    }

    pub(crate) fn who(&self, name: &str) -> Option<Who<'_>> {
        if name == ADMINVM_NAME || name == "@adminvm" {
            return Some(Who::Dom0);
        }
        self.domains.get(name).map(Who::Domain)
    }

    pub(crate) fn default_dispvm_of<'a>(&'a self, who: Who<'a>) -> Option<&'a DomainName> {
        match who {
            Who::Dom0 => self.dom0_default_dispvm.as_ref(),
            Who::Domain(d) => d.default_dispvm.as_ref(),
        }
    }

    pub(crate) fn tags_of<'a>(&'a self, who: Who<'a>) -> &'a BTreeSet<String> {
        match who {
            Who::Dom0 => &self.dom0_tags,
            Who::Domain(d) => &d.tags,
        }
    }

    /// The disposable template `name`, if it exists and may seed disposables.
    pub(crate) fn dispvm_template(&self, name: &str) -> Option<&DomainInfo> {
        self.domains.get(name).filter(|d| d.template_for_dispvms)
    }
}

/// The source or a target domain, resolved against a [`System`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Who<'a> {
    Dom0,
    Domain(&'a DomainInfo),
}

impl Who<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Who::Dom0 => ADMINVM_NAME,
            Who::Domain(d) => d.name.as_str(),
        }
    }
}

/// A domain type for `@type:`: Bulkhead's class names, or Qubes' class names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSel {
    /// One of Bulkhead's classes (`app`, `template`, ...).
    Class(DomainClass),
    /// `admin` / `AdminVM`: dom0.
    Admin,
    /// Qubes `AppVM`: app, disposable-template and service domains.
    QubesAppVm,
    /// Qubes `TemplateVM`.
    QubesTemplateVm,
    /// Qubes `StandaloneVM`.
    QubesStandaloneVm,
    /// Qubes `DispVM`.
    QubesDispVm,
    /// Qubes `RemoteVM`: accepted for compatibility, matches nothing (Bulkhead has none).
    QubesRemoteVm,
}

impl TypeSel {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" | "AdminVM" => TypeSel::Admin,
            "AppVM" => TypeSel::QubesAppVm,
            "TemplateVM" => TypeSel::QubesTemplateVm,
            "StandaloneVM" => TypeSel::QubesStandaloneVm,
            "DispVM" => TypeSel::QubesDispVm,
            "RemoteVM" => TypeSel::QubesRemoteVm,
            other => TypeSel::Class(DomainClass::ALL.into_iter().find(|c| c.as_str() == other)?),
        })
    }

    pub(crate) fn matches(self, who: Who<'_>) -> bool {
        let class = match who {
            Who::Dom0 => return self == TypeSel::Admin,
            Who::Domain(d) => d.class,
        };
        match self {
            TypeSel::Class(c) => c == class,
            TypeSel::Admin | TypeSel::QubesRemoteVm => false,
            TypeSel::QubesAppVm => matches!(
                class,
                DomainClass::App | DomainClass::DisposableTemplate | DomainClass::Service
            ),
            TypeSel::QubesTemplateVm => class == DomainClass::Template,
            TypeSel::QubesStandaloneVm => class == DomainClass::Standalone,
            TypeSel::QubesDispVm => class == DomainClass::Disposable,
        }
    }
}

/// A call to decide: `source` asks for `service+argument` on `target`.
///
/// - `argument` is `+ARG`, `+` or empty (both mean "no argument"), as qrexec sends it.
/// - `source` is a domain name or `dom0`.
/// - `target` is what the caller asked for: a domain name, `uuid:…`, `dom0`/`@adminvm`,
///   `@default` or empty, `@dispvm`, `@dispvm:NAME`; the `$` spellings that Qubes VMs use
///   (`$dispvm`, `$default`, ...) are accepted too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: String,
    pub argument: String,
    pub source: String,
    pub target: String,
}

impl Request {
    pub fn new(service: &str, argument: &str, source: &str, target: &str) -> Self {
        Self {
            service: service.to_owned(),
            argument: argument.to_owned(),
            source: source.to_owned(),
            target: target.to_owned(),
        }
    }
}

/// The caller's requested target after checking it against the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intended {
    Name(DomainName),
    AdminVm,
    Default,
    DispVm,
    DispVmTemplate(DomainName),
}
