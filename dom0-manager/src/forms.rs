//! Form validation for the manager, as you type. The rules are bulkhead_domain's (the same
//! code domaind runs); this module only adds "a domain of that name exists" and turns the
//! errors into one message.

use std::str::FromStr;

use bulkhead_domain::{DomainClass, DomainConfig, DomainName, Label};

/// What the create form holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateForm {
    pub name: String,
    pub class: String,
    /// "" = none.
    pub template: String,
    pub label: String,
}

/// Why a new domain name cannot be used, `None` when it can.
pub fn name_problem(name: &str, existing: &[String]) -> Option<String> {
    if let Err(e) = DomainName::new(name) {
        return Some(e.to_string());
    }
    existing
        .iter()
        .any(|n| n == name)
        .then(|| format!("a domain named '{name}' already exists"))
}

/// Every problem of the create form in one message, `None` when domaind would accept it
/// (as far as dom0 can tell: the template must also exist, which it checks again).
pub fn create_problem(form: &CreateForm, existing: &[String]) -> Option<String> {
    if let Some(p) = name_problem(&form.name, existing) {
        return Some(p);
    }
    let name = DomainName::new(&form.name).ok()?;
    let class = match DomainClass::from_str(&form.class) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let label = match Label::from_str(&form.label) {
        Ok(l) => l,
        Err(e) => return Some(e.to_string()),
    };
    let template = if form.template.is_empty() {
        None
    } else {
        match DomainName::new(&form.template) {
            Ok(t) => Some(t),
            Err(e) => return Some(format!("template: {e}")),
        }
    };
    if let Some(t) = &template {
        if !existing.iter().any(|n| n == t.as_str()) {
            return Some(format!("template '{t}' does not exist"));
        }
    }
    DomainConfig::new(name, class, label, template)
        .err()
        .map(|e| e.to_string())
}

/// Why the clone form cannot be used, `None` when it can.
pub fn clone_problem(source: Option<&str>, dest: &str, existing: &[String]) -> Option<String> {
    if source.is_none() {
        return Some("select the domain to clone in the list".into());
    }
    name_problem(dest, existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing() -> Vec<String> {
        vec!["work".into(), "debian-12".into()]
    }

    #[test]
    fn names() {
        assert_eq!(name_problem("fresh", &existing()), None);
        assert!(name_problem("work", &existing())
            .unwrap()
            .contains("already exists"));
        assert!(name_problem("1abc", &existing())
            .unwrap()
            .contains("must start with a letter"));
        assert!(name_problem("", &existing()).unwrap().contains("empty"));
        assert!(name_problem("a b", &existing()).unwrap().contains("' '"));
    }

    #[test]
    fn create_form() {
        let mut f = CreateForm {
            name: "mail".into(),
            class: "app".into(),
            template: "debian-12".into(),
            label: "blue".into(),
        };
        assert_eq!(create_problem(&f, &existing()), None);
        f.template.clear();
        assert!(create_problem(&f, &existing())
            .unwrap()
            .contains("needs a template"));
        f.template = "nope".into();
        assert!(create_problem(&f, &existing())
            .unwrap()
            .contains("does not exist"));
        f.template = "debian-12".into();
        f.label = "pink".into();
        assert!(create_problem(&f, &existing()).is_some());
        f.label = "blue".into();
        f.name = "dom0".into();
        assert!(create_problem(&f, &existing())
            .unwrap()
            .contains("reserved"));
    }

    #[test]
    fn clone_form() {
        assert!(clone_problem(None, "x", &existing()).is_some());
        assert_eq!(clone_problem(Some("work"), "work2", &existing()), None);
        assert!(clone_problem(Some("work"), "work", &existing()).is_some());
    }
}
