//! Domain names, validated with the rules Qubes applies to qube names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted domain name (Qubes: 31 characters).
pub const MAX_NAME_LEN: usize = 31;

/// Names that are never accepted (they mean something else in properties and policies).
pub const RESERVED_NAMES: &[&str] = &["Domain-0", "none", "default", "dom0"];

/// Why a string is not a valid domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("domain name is empty")]
    Empty,
    #[error("domain name {name:?} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { name: String, len: usize },
    #[error("domain name {name:?} must start with a letter (a-z, A-Z)")]
    BadFirstChar { name: String },
    #[error(
        "domain name {name:?} contains {ch:?} at position {pos}; only letters, digits, '_', '.' and '-' are allowed"
    )]
    BadChar { name: String, ch: char, pos: usize },
    #[error("domain name {name:?} is reserved")]
    Reserved { name: String },
    #[error(
        "domain name {name:?} must not end in \"-dm\" (reserved for device-model stub domains)"
    )]
    EndsWithDm { name: String },
    #[error("no free disposable name: all of disp0..disp9999 are taken")]
    NoFreeDisposableName,
}

/// A validated domain name.
///
/// Rules (Qubes `validate_name`): at most 31 characters, `^[a-zA-Z][a-zA-Z0-9_.-]*$`,
/// not one of `Domain-0`, `none`, `default`, `dom0`, and not ending in `-dm`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Validate `name` and wrap it.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Check `name` against the domain name rules without allocating a [`DomainName`].
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let owned = || name.to_owned();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: owned(), len });
    }
    let mut chars = name.chars();
    // `name` is not empty, so there is a first char.
    if let Some(first) = chars.next() {
        if !first.is_ascii_alphabetic() {
            return Err(NameError::BadFirstChar { name: owned() });
        }
    }
    for (pos, ch) in name.chars().enumerate().skip(1) {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')) {
            return Err(NameError::BadChar {
                name: owned(),
                ch,
                pos,
            });
        }
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(NameError::Reserved { name: owned() });
    }
    if name.ends_with("-dm") {
        return Err(NameError::EndsWithDm { name: owned() });
    }
    Ok(())
}

impl TryFrom<String> for DomainName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate_name(&value)?;
        Ok(Self(value))
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> Self {
        value.0
    }
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for DomainName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for DomainName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for DomainName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for DomainName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Highest disposable number (inclusive); disposables are named `disp0` .. `disp9999`.
pub const MAX_DISPOSABLE_ID: u32 = 9999;

/// Random draws tried before falling back to a scan of every id.
const RANDOM_TRIES: usize = 64;

/// Pick a fresh disposable name, `disp<N>` with N random in 0..=9999 as Qubes does
/// (no zero padding, like Qubes' `disp` + `str(dispid)`).
///
/// `existing(name)` must say whether a domain of that name exists. Collisions are retried
/// with new random draws; if those keep colliding every id is scanned from a random start,
/// and [`NameError::NoFreeDisposableName`] is returned when all 10000 are taken.
pub fn new_disposable_name(existing: &impl Fn(&str) -> bool) -> Result<DomainName, NameError> {
    let span = MAX_DISPOSABLE_ID + 1;
    for _ in 0..RANDOM_TRIES {
        let id = random_below(span);
        let name = format!("disp{id}");
        if !existing(&name) {
            return DomainName::new(&name);
        }
    }
    let start = random_below(span);
    for offset in 0..span {
        let id = (start + offset) % span;
        let name = format!("disp{id}");
        if !existing(&name) {
            return DomainName::new(&name);
        }
    }
    Err(NameError::NoFreeDisposableName)
}

/// Uniform random number in `0..bound` from the OS generator.
fn random_below(bound: u32) -> u32 {
    // Rejection sampling to avoid modulo bias.
    let zone = u32::MAX - (u32::MAX % bound);
    loop {
        // getrandom only fails when the OS has no entropy source at all; fall back to the
        // clock so that name picking still works (names need to be unique, not secret).
        let v = getrandom::u32().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        });
        if v < zone {
            return v % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    #[test]
    fn good_names() {
        for n in [
            "work",
            "a",
            "Work-2",
            "debian-12",
            "debian-12-dvm",
            "sys.net_1",
            "a234567890123456789012345678901",
            "dm",
            "x-d",
            "none1",
            "Dom0",
            "domain-0",
        ] {
            assert!(DomainName::new(n).is_ok(), "{n} should be valid");
        }
    }

    #[test]
    fn bad_names() {
        type Check = fn(&NameError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, NameError::Empty)),
            ("a2345678901234567890123456789012", |e| {
                matches!(e, NameError::TooLong { len: 32, .. })
            }),
            ("1work", |e| matches!(e, NameError::BadFirstChar { .. })),
            ("-work", |e| matches!(e, NameError::BadFirstChar { .. })),
            ("_work", |e| matches!(e, NameError::BadFirstChar { .. })),
            ("wo rk", |e| {
                matches!(
                    e,
                    NameError::BadChar {
                        ch: ' ',
                        pos: 2,
                        ..
                    }
                )
            }),
            ("work/x", |e| {
                matches!(e, NameError::BadChar { ch: '/', .. })
            }),
            ("wörk", |e| matches!(e, NameError::BadChar { ch: 'ö', .. })),
            ("work\n", |e| matches!(e, NameError::BadChar { .. })),
            ("Domain-0", |e| matches!(e, NameError::Reserved { .. })),
            ("none", |e| matches!(e, NameError::Reserved { .. })),
            ("default", |e| matches!(e, NameError::Reserved { .. })),
            ("dom0", |e| matches!(e, NameError::Reserved { .. })),
            ("work-dm", |e| matches!(e, NameError::EndsWithDm { .. })),
        ];
        for (name, check) in cases {
            let err = DomainName::new(name).expect_err(name);
            assert!(check(&err), "{name:?}: unexpected error {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn serde_validates() {
        #[derive(Deserialize)]
        struct W {
            #[allow(dead_code)]
            n: DomainName,
        }
        assert!(toml::from_str::<W>("n = \"ok\"").is_ok());
        let e = toml::from_str::<W>("n = \"dom0\"")
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("reserved"));
    }

    #[test]
    fn disposable_names_are_fresh_and_valid() {
        let taken = RefCell::new(HashSet::new());
        for _ in 0..200 {
            let n = new_disposable_name(&|n: &str| taken.borrow().contains(n)).unwrap();
            let id: u32 = n.as_str().strip_prefix("disp").unwrap().parse().unwrap();
            assert!(id <= MAX_DISPOSABLE_ID);
            assert!(taken.borrow_mut().insert(n.as_str().to_owned()));
        }
    }

    #[test]
    fn disposable_name_finds_last_free_slot() {
        let n = new_disposable_name(&|n: &str| n != "disp4242").unwrap();
        assert_eq!(n.as_str(), "disp4242");
    }

    #[test]
    fn disposable_name_exhausted() {
        assert_eq!(
            new_disposable_name(&|_| true),
            Err(NameError::NoFreeDisposableName)
        );
    }
}
