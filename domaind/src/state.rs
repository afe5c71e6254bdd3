//! The runtime state machine of one domain.
//!
//! ```text
//!  halted --start--> starting --agent connected--> running <--pause/unpause--> paused
//!     ^                 |                            |  \                        |
//!     |            (failure)                   shutdown  init dies on its own    |
//!     |                 v                            v        v                  |
//!     +------------- halted <--cleanup-- stopping / dying <---------kill---------+
//! ```
//! Every transition goes through [`DomainState::check`], which turns a forbidden one into an
//! error message that says what to do instead.

use bulkhead_api::state as s;

/// Operations that need a particular state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Shutdown,
    Kill,
    Pause,
    Unpause,
    Run,
    Remove,
    ChangeStaticProperty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainState {
    #[default]
    Halted,
    Starting,
    Running,
    Paused,
    Stopping,
    Dying,
}

impl DomainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Halted => s::HALTED,
            DomainState::Starting => s::STARTING,
            DomainState::Running => s::RUNNING,
            DomainState::Paused => s::PAUSED,
            DomainState::Stopping => s::STOPPING,
            DomainState::Dying => s::DYING,
        }
    }

    /// Whether a sandbox instance exists for this state.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::Halted)
    }

    /// Whether `op` may run in this state; the error text names the domain and the way out.
    pub fn check(self, name: &str, op: Op) -> Result<(), String> {
        use DomainState::*;
        let ok = match op {
            Op::Start => self == Halted,
            Op::Shutdown | Op::Kill => matches!(self, Running | Paused | Starting),
            Op::Pause => self == Running,
            Op::Unpause => self == Paused,
            Op::Run => matches!(self, Halted | Running),
            Op::Remove | Op::ChangeStaticProperty => self == Halted,
        };
        if ok {
            return Ok(());
        }
        let st = self.as_str();
        Err(match (op, self) {
            (Op::Start, Running | Paused) => format!("domain '{name}' is already {st}"),
            (Op::Start, _) => format!("domain '{name}' is {st}; wait until it is halted"),
            (Op::Shutdown | Op::Kill, Halted) => format!("domain '{name}' is not running"),
            (Op::Shutdown | Op::Kill, _) => {
                format!("domain '{name}' is already {st}; wait until it is halted")
            }
            (Op::Pause, Paused) => format!("domain '{name}' is already paused"),
            (Op::Pause, _) => format!("domain '{name}' is {st}; only a running domain can be paused"),
            (Op::Unpause, _) => format!("domain '{name}' is {st}, not paused"),
            (Op::Run, Paused) => format!(
                "domain '{name}' is paused; unpause it first (bulkhead unpause {name})"
            ),
            (Op::Run, _) => format!("domain '{name}' is {st}; wait until it is running"),
            (Op::Remove, _) => format!(
                "domain '{name}' is {st}; shut it down first (bulkhead shutdown {name})"
            ),
            (Op::ChangeStaticProperty, _) => format!(
                "domain '{name}' is {st}; this property can only change while it is halted (bulkhead shutdown {name})"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(DomainState::Halted.check("w", Op::Start).is_ok());
        assert!(DomainState::Running.check("w", Op::Pause).is_ok());
        assert!(DomainState::Paused.check("w", Op::Unpause).is_ok());
        assert!(DomainState::Paused.check("w", Op::Kill).is_ok());
        assert!(DomainState::Halted.check("w", Op::Run).is_ok());
        let e = DomainState::Running.check("work", Op::Remove).unwrap_err();
        assert_eq!(
            e,
            "domain 'work' is running; shut it down first (bulkhead shutdown work)"
        );
        assert!(DomainState::Halted
            .check("w", Op::Shutdown)
            .unwrap_err()
            .contains("not running"));
        assert!(DomainState::Paused
            .check("w", Op::Run)
            .unwrap_err()
            .contains("unpause"));
        assert!(DomainState::Stopping.check("w", Op::Start).is_err());
    }
}
