//! Build progress events and the parser for mmdebstrap's terminal output.

use std::fmt;
use std::path::PathBuf;

/// The steps of a template build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Checking the host, finding apt sources and keyrings.
    Setup,
    /// `apt-get update` for the recipe's suite.
    Update,
    /// Downloading packages.
    Download,
    /// Unpacking the essential packages.
    Extract,
    /// Configuring the essential packages.
    InstallEssential,
    /// Installing the recipe's packages inside the chroot.
    InstallRemaining,
    /// Recipe steps: user, hostname, clean-up hooks.
    Customize,
    /// Removing apt caches and package lists.
    Cleanup,
    /// Verifying the tree and switching the template to it.
    Finalize,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Setup,
        Stage::Update,
        Stage::Download,
        Stage::Extract,
        Stage::InstallEssential,
        Stage::InstallRemaining,
        Stage::Customize,
        Stage::Cleanup,
        Stage::Finalize,
    ];
    /// Number of stages (for "step i of N" displays).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// 1-based position of the stage.
    pub fn index(self) -> u32 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u32 + 1
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::Update => "update",
            Stage::Download => "download",
            Stage::Extract => "extract",
            Stage::InstallEssential => "install-essential",
            Stage::InstallRemaining => "install",
            Stage::Customize => "customize",
            Stage::Cleanup => "cleanup",
            Stage::Finalize => "finalize",
        }
    }

    /// Map one of mmdebstrap's `I:` messages to the stage it starts, if it starts one.
    fn from_info(msg: &str) -> Option<Stage> {
        const MAP: &[(&str, Stage)] = &[
            ("chroot architecture", Stage::Setup),
            ("running apt-get update", Stage::Update),
            ("downloading packages", Stage::Download),
            ("downloading apt", Stage::Download),
            ("extracting archives", Stage::Extract),
            ("installing essential packages", Stage::InstallEssential),
            ("installing apt", Stage::InstallEssential),
            ("installing remaining packages", Stage::InstallRemaining),
            ("running --customize-hook", Stage::Customize),
            ("running special hook", Stage::Customize),
            ("cleaning package lists", Stage::Cleanup),
        ];
        MAP.iter()
            .find(|(prefix, _)| msg.starts_with(prefix))
            .map(|(_, s)| *s)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity of a builder message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildProgress {
    /// The recipe's tree is already built; nothing to do.
    Cached { root: PathBuf },
    /// A build starts (`hash` is the recipe's cache key).
    Started { name: String, hash: String },
    /// A new stage begins; `message` is the builder's own line.
    Stage { stage: Stage, message: String },
    /// Progress within the current stage, 0..=100.
    Percent {
        stage: Stage,
        label: String,
        percent: f32,
    },
    /// Another message of the builder (warnings and errors included).
    Message { level: Level, text: String },
    /// The build finished and the template now points at `root`.
    Finished { root: PathBuf, seconds: f64 },
}

impl fmt::Display for BuildProgress {
    /// One human line, as `BuildTemplate` writes them to its progress fd.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildProgress::Cached { root } => {
                write!(f, "up to date: {}", root.display())
            }
            BuildProgress::Started { name, hash } => {
                write!(
                    f,
                    "building template {name} (recipe {})",
                    &hash[..hash.len().min(16)]
                )
            }
            BuildProgress::Stage { stage, message } => {
                write!(f, "[{}/{}] {stage}: {message}", stage.index(), Stage::COUNT)
            }
            BuildProgress::Percent {
                stage,
                label,
                percent,
            } => write!(
                f,
                "[{}/{}] {stage}: {label} {percent:.0}%",
                stage.index(),
                Stage::COUNT
            ),
            BuildProgress::Message { level, text } => {
                let tag = match level {
                    Level::Info => "info",
                    Level::Warning => "warning",
                    Level::Error => "error",
                };
                write!(f, "{tag}: {text}")
            }
            BuildProgress::Finished { root, seconds } => {
                write!(f, "done in {seconds:.1} s: {}", root.display())
            }
        }
    }
}

/// Longest line kept by the parser; longer output is cut (the log keeps what we keep).
pub const MAX_LINE: usize = 8192;

/// Incremental parser of mmdebstrap's stderr when it runs on a terminal: `I:`/`W:`/`E:`
/// lines (coloured), and progress bars redrawn with `\r` (`status:  45.00 [===>   ]`).
#[derive(Debug)]
pub struct OutputParser {
    buf: Vec<u8>,
    stage: Stage,
    last_percent: Option<(String, u32)>,
}

impl Default for OutputParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Remove ANSI escape sequences (CSI `ESC [ ... final`, and lone ESC + one char).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: parameters and intermediates up to the final byte 0x40..=0x7e; any other
        // escape is two characters long.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Parse a progress bar segment: `status:  45.00 [===>   ]` or `  45.00 [...]`.
fn parse_bar(seg: &str) -> Option<(String, f32)> {
    let seg = seg.trim();
    let open = seg.find('[')?;
    if !seg.ends_with(']') {
        return None;
    }
    let head = seg[..open].trim();
    let (label, num) = match head.rsplit_once(char::is_whitespace) {
        Some((l, n)) => (l.trim().trim_end_matches(':').to_owned(), n),
        None => (String::new(), head),
    };
    let percent: f32 = num.parse().ok()?;
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    Some((label, percent))
}

impl OutputParser {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            stage: Stage::Setup,
            last_percent: None,
        }
    }

    /// The stage the output has reached.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Feed raw output. Returns the events found and the finished log lines (escape codes
    /// removed; progress bar redraws are not logged).
    pub fn feed(&mut self, bytes: &[u8]) -> (Vec<BuildProgress>, Vec<String>) {
        let mut events = Vec::new();
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                let seg = std::mem::take(&mut self.buf);
                self.segment(&seg, &mut events, &mut lines);
            } else if self.buf.len() < MAX_LINE {
                self.buf.push(b);
            }
        }
        (events, lines)
    }

    /// Flush a trailing unterminated line.
    pub fn finish(&mut self) -> (Vec<BuildProgress>, Vec<String>) {
        let mut events = Vec::new();
        let mut lines = Vec::new();
        let seg = std::mem::take(&mut self.buf);
        if !seg.is_empty() {
            self.segment(&seg, &mut events, &mut lines);
        }
        (events, lines)
    }

    fn segment(&mut self, raw: &[u8], events: &mut Vec<BuildProgress>, lines: &mut Vec<String>) {
        let text = strip_ansi(&String::from_utf8_lossy(raw));
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        if let Some((label, percent)) = parse_bar(text) {
            // Report each whole percent once per label.
            let whole = percent as u32;
            let key = (label.clone(), whole);
            if self.last_percent.as_ref() != Some(&key) {
                self.last_percent = Some(key);
                events.push(BuildProgress::Percent {
                    stage: self.stage,
                    label,
                    percent,
                });
            }
            return;
        }
        if text.trim() == "done" {
            return;
        }
        lines.push(text.to_owned());
        if let Some(msg) = text.strip_prefix("I: ") {
            match Stage::from_info(msg) {
                Some(stage) if stage != self.stage || stage == Stage::Customize => {
                    self.stage = stage;
                    self.last_percent = None;
                    events.push(BuildProgress::Stage {
                        stage,
                        message: msg.to_owned(),
                    });
                }
                _ => events.push(BuildProgress::Message {
                    level: Level::Info,
                    text: msg.to_owned(),
                }),
            }
        } else if let Some(msg) = text.strip_prefix("W: ") {
            events.push(BuildProgress::Message {
                level: Level::Warning,
                text: msg.to_owned(),
            });
        } else if let Some(msg) = text.strip_prefix("E: ") {
            events.push(BuildProgress::Message {
                level: Level::Error,
                text: msg.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_percent_and_log() {
        let mut p = OutputParser::new();
        let out = concat!(
            "\x1b[32mI: chroot architecture amd64 is equal to the host's architecture\x1b[0m\r\n",
            "\x1b[32mI: running apt-get update...\x1b[0m\r\n",
            "\x1b[2Kupdate:        0.00 [>                        ]\r",
            "\x1b[2Kupdate:       50.00 [============>            ]\r",
            "\x1b[2Kupdate:       50.40 [============>            ]\r",
            "\x1b[2Kdone\r\n",
            "\x1b[32mI: downloading packages with apt...\x1b[0m\r\n",
            "\x1b[2Kdownloading: 12.00 [===>]\r",
            "\x1b[33mW: something odd\x1b[0m\r\n",
            "\x1b[32mI: running --customize-hook in shell: sh -c 'x' exec /t\x1b[0m\r\n",
            "\x1b[32mI: running --customize-hook in shell: sh -c 'y' exec /t\x1b[0m\r\n",
            "\x1b[32mI: success in 27.5 seconds\x1b[0m\r\n",
        );
        // Feed in awkward pieces to exercise partial lines.
        let mut events = Vec::new();
        let mut lines = Vec::new();
        for chunk in out.as_bytes().chunks(7) {
            let (e, l) = p.feed(chunk);
            events.extend(e);
            lines.extend(l);
        }
        let (e, l) = p.finish();
        events.extend(e);
        lines.extend(l);
        let stages: Vec<Stage> = events
            .iter()
            .filter_map(|e| match e {
                BuildProgress::Stage { stage, .. } => Some(*stage),
                _ => None,
            })
            .collect();
        assert_eq!(
            stages,
            vec![
                Stage::Update,
                Stage::Download,
                Stage::Customize,
                Stage::Customize
            ]
        );
        let percents: Vec<(Stage, String, u32)> = events
            .iter()
            .filter_map(|e| match e {
                BuildProgress::Percent {
                    stage,
                    label,
                    percent,
                } => Some((*stage, label.clone(), *percent as u32)),
                _ => None,
            })
            .collect();
        assert_eq!(
            percents,
            vec![
                (Stage::Update, "update".into(), 0),
                (Stage::Update, "update".into(), 50),
                (Stage::Download, "downloading".into(), 12),
            ]
        );
        assert!(events.contains(&BuildProgress::Message {
            level: Level::Warning,
            text: "something odd".into()
        }));
        assert!(lines
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains('[') || l.contains("customize")));
        assert_eq!(
            lines.first().map(String::as_str),
            Some("I: chroot architecture amd64 is equal to the host's architecture")
        );
        assert!(lines.iter().any(|l| l == "I: success in 27.5 seconds"));
        assert!(!lines.iter().any(|l| l.contains("done")));
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut p = OutputParser::new();
        let big = vec![b'x'; MAX_LINE * 3];
        let (_, l) = p.feed(&big);
        assert!(l.is_empty());
        let (_, l) = p.feed(b"\n");
        assert_eq!(l[0].len(), MAX_LINE);
    }

    #[test]
    fn bars() {
        assert_eq!(parse_bar("x:  5.00 [>  ]"), Some(("x".into(), 5.0)));
        assert_eq!(parse_bar("   99.99 [===]"), Some(("".into(), 99.99)));
        assert_eq!(parse_bar("I: [foo]"), None);
        assert_eq!(parse_bar("x: 500 [=]"), None);
        assert_eq!(strip_ansi("\x1b[2K\x1b[32mhi\x1b[0m"), "hi");
    }

    #[test]
    fn display() {
        let e = BuildProgress::Percent {
            stage: Stage::Download,
            label: "downloading".into(),
            percent: 42.4,
        };
        assert_eq!(e.to_string(), "[3/9] download: downloading 42%");
    }
}
