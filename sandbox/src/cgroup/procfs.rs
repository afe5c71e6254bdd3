//! Task state read from `/proc`: CPU ticks, whether a task is a kernel thread or stopped,
//! and a summary of the tasks that did not freeze.

use std::fs;
use std::path::Path;

use crate::read_small;

/// utime + stime + cutime + cstime (clock ticks) of a `/proc/<pid>/stat` line.
pub(super) fn proc_cpu_ticks(stat: &str) -> Option<u64> {
    // the command name may contain anything, so count fields after its closing parenthesis
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14
    f.get(11..15)?.iter().map(|v| v.parse::<u64>().ok()).sum()
}

/// The state letter and flags of `/proc/<path>/stat` (`None` if it is gone).
fn stat_state_flags(path: &str) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{path}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // after state: ppid pgrp session tty_nr tpgid flags
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// PF_KTHREAD in a task's flags.
const PF_KTHREAD: u64 = 0x0020_0000;

pub(super) fn is_kernel_thread(pid: i32) -> bool {
    stat_state_flags(&pid.to_string()).is_some_and(|(_, f)| f & PF_KTHREAD != 0)
}

/// Every thread of `pid` is stopped (`T`), or the process is gone.
pub(super) fn threads_stopped(pid: i32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    dir.flatten().all(|t| {
        let tid = t.file_name();
        match stat_state_flags(&format!("{pid}/task/{}", tid.to_string_lossy())) {
            Some((state, _)) => matches!(state, 'T' | 'X' | 'Z'),
            None => true,
        }
    })
}

/// `tid comm state wchan` of every thread listed in `threads` (a cgroup's `cgroup.threads`),
/// for an error that says which tasks did not freeze. Best effort, at most 16 threads.
pub(super) fn task_states(threads: &Path) -> String {
    let Ok(list) = read_small(threads) else {
        return "unknown".into();
    };
    let mut out = Vec::new();
    for tid in list.split_whitespace().take(16) {
        let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).unwrap_or_default();
        let (comm, rest) = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => (&stat[a + 1..b], stat[b + 1..].trim_start()),
            _ => ("?", ""),
        };
        let state = rest.split(' ').next().unwrap_or("?");
        let wchan = std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default();
        out.push(format!("{tid} {comm} {state} {wchan}"));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_ticks() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 0 0";
        assert_eq!(proc_cpu_ticks(line), Some(13));
        assert_eq!(proc_cpu_ticks("42 (x) S 1"), None);
        assert_eq!(proc_cpu_ticks("no paren"), None);
    }
}
