//! The policy editor's simple view: the common decisions (who may paste into whom, who may
//! send files where, who opens things in disposables) as rows, kept in the ordinary policy
//! files the editor owns (`50-config-*.policy`, see `policies/README.md`), in the ordinary
//! format. Lines the simple view does not understand are kept as they are, in place.

/// One kind of common decision and the file it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `bulkhead.ClipboardPaste` (`50-config-clipboard.policy`).
    Paste,
    /// `bulkhead.Filecopy` (`50-config-filecopy.policy`).
    Filecopy,
    /// `bulkhead.OpenInVM` (`50-config-openinvm.policy`); `@dispvm` targets are the
    /// "opens in a disposable" rules.
    OpenInVm,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Paste, Kind::Filecopy, Kind::OpenInVm];

    pub fn service(self) -> &'static str {
        match self {
            Kind::Paste => "bulkhead.ClipboardPaste",
            Kind::Filecopy => "bulkhead.Filecopy",
            Kind::OpenInVm => "bulkhead.OpenInVM",
        }
    }

    pub fn file(self) -> &'static str {
        match self {
            Kind::Paste => "50-config-clipboard.policy",
            Kind::Filecopy => "50-config-filecopy.policy",
            Kind::OpenInVm => "50-config-openinvm.policy",
        }
    }

    /// The question the section answers.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Paste => "Who may paste into whom (clipboard)",
            Kind::Filecopy => "Who may send files where",
            Kind::OpenInVm => "Who opens files in disposables (target @dispvm) or other domains",
        }
    }

    /// The target a new rule starts with.
    pub fn default_target(self) -> &'static str {
        match self {
            Kind::OpenInVm => "@dispvm",
            _ => "@anyvm",
        }
    }

    fn header(self) -> String {
        format!(
            "# {}.\n# Written by the policy editor's simple view; edit here or by hand.\n# First match wins.\n#\n# SERVICE  ARG  SOURCE  TARGET  ACTION\n",
            self.title()
        )
    }
}

/// The actions the simple view offers.
pub const ACTIONS: [&str; 3] = ["allow", "ask", "deny"];

/// A plain rule: `SERVICE * SOURCE TARGET ACTION` with no parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRule {
    pub source: String,
    pub target: String,
    pub action: String,
}

/// A line of the file: a plain rule of the kind's service, or anything else kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Rule(SimpleRule),
    Other(String),
}

/// The file of one kind as the simple view sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleFile {
    pub kind: Kind,
    pub items: Vec<Item>,
}

impl SimpleFile {
    /// Parse `text` (the file's content; "" for a file that does not exist yet gets the
    /// standard header).
    pub fn parse(kind: Kind, text: &str) -> Self {
        if text.trim().is_empty() {
            return Self {
                kind,
                items: kind
                    .header()
                    .lines()
                    .map(|l| Item::Other(l.into()))
                    .collect(),
            };
        }
        let items = text
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                match f[..] {
                    [svc, "*", src, tgt, act]
                        if svc == kind.service() && ACTIONS.contains(&act) =>
                    {
                        Item::Rule(SimpleRule {
                            source: src.into(),
                            target: tgt.into(),
                            action: act.into(),
                        })
                    }
                    _ => Item::Other(line.to_owned()),
                }
            })
            .collect();
        Self { kind, items }
    }

    /// The plain rules, in file order.
    pub fn rules(&self) -> Vec<&SimpleRule> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Rule(r) => Some(r),
                Item::Other(_) => None,
            })
            .collect()
    }

    /// Add `rule` before every other rule of the file (first match wins, so a new specific
    /// decision must come before the broad ones).
    pub fn add_first(&mut self, rule: SimpleRule) {
        let first_rule = self
            .items
            .iter()
            .position(|i| match i {
                Item::Rule(_) => true,
                Item::Other(l) => {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with('#')
                }
            })
            .unwrap_or(self.items.len());
        self.items.insert(first_rule, Item::Rule(rule));
    }

    /// Remove the `n`th plain rule (as [`rules`](Self::rules) numbers them).
    pub fn remove_rule(&mut self, n: usize) -> Option<SimpleRule> {
        let pos = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i, Item::Rule(_)))
            .nth(n)
            .map(|(p, _)| p)?;
        match self.items.remove(pos) {
            Item::Rule(r) => Some(r),
            Item::Other(_) => None,
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            match i {
                Item::Rule(r) => out.push_str(&format!(
                    "{:<24} *    {:<12} {:<12} {}",
                    self.kind.service(),
                    r.source,
                    r.target,
                    r.action
                )),
                Item::Other(l) => out.push_str(l),
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "# Clipboard paste between domains.\n#\n# SERVICE ARG SOURCE TARGET ACTION\nbulkhead.ClipboardPaste  *    @adminvm   @anyvm   ask\nbulkhead.ClipboardPaste  *  work  @anyvm  ask default_target=mail\nbulkhead.Filecopy * @anyvm @anyvm ask\n";

    #[test]
    fn parse_keeps_what_it_does_not_know() {
        let f = SimpleFile::parse(Kind::Paste, SHIPPED);
        let rules = f.rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].source, "@adminvm");
        assert_eq!(rules[0].action, "ask");
        // parameters and other services stay verbatim
        let again = SimpleFile::parse(Kind::Paste, &f.render());
        assert_eq!(again, f);
        assert!(f
            .render()
            .contains("bulkhead.ClipboardPaste  *  work  @anyvm  ask default_target=mail\n"));
    }

    #[test]
    fn add_goes_before_the_first_rule_and_remove_by_index() {
        let mut f = SimpleFile::parse(Kind::Paste, SHIPPED);
        f.add_first(SimpleRule {
            source: "work".into(),
            target: "mail".into(),
            action: "deny".into(),
        });
        let text = f.render();
        let deny = text.find("work         mail         deny").unwrap();
        let ask = text.find("@adminvm").unwrap();
        assert!(deny < ask, "{text}");
        assert!(text.starts_with("# Clipboard"));
        assert_eq!(f.remove_rule(0).unwrap().target, "mail");
        assert_eq!(f.rules().len(), 1);
        assert!(f.remove_rule(5).is_none());
    }

    #[test]
    fn empty_file_gets_a_header() {
        let mut f = SimpleFile::parse(Kind::OpenInVm, "");
        assert!(f.rules().is_empty());
        f.add_first(SimpleRule {
            source: "work".into(),
            target: Kind::OpenInVm.default_target().into(),
            action: "allow".into(),
        });
        let text = f.render();
        assert!(text.starts_with("# Who opens"));
        assert!(text.ends_with("bulkhead.OpenInVM        *    work         @dispvm      allow\n"));
    }
}
