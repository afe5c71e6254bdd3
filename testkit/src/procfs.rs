//! What tests read from `/proc`: whether a process lives, its parent, children, descendants,
//! command line and uid, the threads of a VMM.

/// Whether process `pid` exists and is not a zombie (read from /proc).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// (thread name, state letter) of every thread of the VMM `pid` and its children (the confined
/// VMM runs as a child of `bulkhead-vmm run`).
pub fn vmm_thread_states(pid: i32) -> Vec<(String, char)> {
    let mut pids = vec![pid];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    let mut out = Vec::new();
    for p in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            if let (Some(a), Some(b)) = (stat.find('('), stat.rfind(')')) {
                let state = stat[b + 1..].trim_start().chars().next().unwrap_or('?');
                out.push((stat[a + 1..b].to_owned(), state));
            }
        }
    }
    out
}

/// Every process id in `/proc` now.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// The parent of `pid` (from `/proc/<pid>/stat`).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
        .and_then(|v| v.parse::<i32>().ok())
}

/// The command line of `pid`, its NULs as spaces (None if it cannot be read).
pub fn cmdline(pid: i32) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmd).replace('\0', " "))
}

/// The uid of a process, from `/proc/<pid>/status`.
pub fn proc_uid(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Pids whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| parent_pid(*p) == Some(pid))
        .collect()
}

/// Descendants of `pid` with their command lines.
pub fn descendants(pid: i32) -> Vec<(i32, String)> {
    let all: Vec<(i32, i32, String)> = pids()
        .into_iter()
        .filter_map(|p| {
            let pp = parent_pid(p)?;
            Some((p, pp, cmdline(p).unwrap_or_default()))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(f) = frontier.pop() {
        for (p, pp, cmd) in &all {
            if *pp == f {
                out.push((*p, cmd.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

/// Pids whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| cmdline(*p).is_some_and(|c| c.contains(needle)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_in_proc() {
        let me = std::process::id() as i32;
        assert!(pids().contains(&me));
        assert!(process_alive(me));
        let parent = parent_pid(me).expect("a parent");
        assert!(children(parent).contains(&me));
        assert!(descendants(parent).iter().any(|(p, _)| *p == me));
        assert_eq!(proc_uid(me), Some(nix::unistd::getuid().as_raw()));
    }
}
