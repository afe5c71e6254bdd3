//! What tests read from `/proc`: whether a process lives, the threads of a VMM.

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
