//! Configuration from what is installed: the policy directories from the installed paths,
//! a domain's [`DomainInfo`] from its configuration.

use super::*;

#[test]
fn config_from_installed_paths() {
    let paths = bulkhead_domain::Paths::under(Path::new("/x"));
    let c = PolicyConfig::from_paths(&paths);
    assert_eq!(c.dir, paths.config_dir.join("policy.d"));
    assert_eq!(c.runtime_dir, Some(paths.runtime_dir.join("policy.d")));
}

#[test]
fn domain_info_from_config() {
    use bulkhead_domain::{DomainConfig, Label};
    let mut cfg =
        DomainConfig::new(n("mail"), DomainClass::App, Label::Blue, Some(n("debian"))).unwrap();
    cfg.default_dispvm = Some(n("dvm"));
    let info = DomainInfo::from_config(&cfg, true);
    assert_eq!(info.name, n("mail"));
    assert_eq!(info.class, DomainClass::App);
    assert_eq!(info.default_dispvm, Some(n("dvm")));
    assert!(info.running && !info.internal && !info.template_for_dispvms);
    cfg.features.insert("internal".into(), "1".into());
    assert!(DomainInfo::from_config(&cfg, false).internal);
    let dvm = DomainConfig::new(
        n("dvm"),
        DomainClass::DisposableTemplate,
        Label::Red,
        Some(n("debian")),
    )
    .unwrap();
    assert!(DomainInfo::from_config(&dvm, false).template_for_dispvms);
}
