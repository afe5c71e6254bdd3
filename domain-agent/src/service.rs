//! Serving `Service` streams: a service call domaind routes to this domain.
//!
//! The service executable is looked up as `/etc/bulkhead/rpc/<SERVICE>` (the domain's own,
//! e.g. from its template) then `/usr/lib/bulkhead/rpc/<SERVICE>` (shipped with the guest
//! tools). It runs as the policy's `user=` or the default user, in the user's home, with
//! `BULKHEAD_REMOTE_DOMAIN` (set by domaind, never by the caller), `BULKHEAD_SERVICE`,
//! `BULKHEAD_SERVICE_ARGUMENT` and `argv[1]` = the argument when there is one. Its stdio is
//! the call's stdio (exec stream protocol).

use std::path::{Path, PathBuf};

use bulkhead_wire::{exec, ExecRequest, ServiceRequest, Stream};

/// Directories searched for service executables, in order.
pub const DEFAULT_RPC_PATH: &[&str] = &["/etc/bulkhead/rpc", "/usr/lib/bulkhead/rpc"];
/// Environment variable overriding the search path (colon-separated; tests).
pub const ENV_RPC_PATH: &str = "BULKHEAD_RPC_PATH";

/// Environment given to a service: the calling domain.
pub const ENV_REMOTE_DOMAIN: &str = "BULKHEAD_REMOTE_DOMAIN";
/// Environment given to a service: its argument ("" when none).
pub const ENV_SERVICE_ARGUMENT: &str = "BULKHEAD_SERVICE_ARGUMENT";
/// Environment given to a service: its name.
pub const ENV_SERVICE: &str = "BULKHEAD_SERVICE";

/// The search path: `$BULKHEAD_RPC_PATH` or [`DEFAULT_RPC_PATH`].
pub fn rpc_path() -> Vec<PathBuf> {
    match std::env::var_os(ENV_RPC_PATH).filter(|v| !v.is_empty()) {
        Some(v) => std::env::split_paths(&v).collect(),
        None => DEFAULT_RPC_PATH.iter().map(PathBuf::from).collect(),
    }
}

/// The executable of `service` in the first directory of `path` that has it. The service
/// name was checked by the wire decoder (`[A-Za-z0-9._-]`, so no `/`); `.` and `..` are
/// refused here as well.
pub fn find_service(path: &[PathBuf], service: &str) -> Option<PathBuf> {
    if service.is_empty() || service == "." || service == ".." || service.contains('/') {
        return None;
    }
    path.iter()
        .map(|d| d.join(service))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// The exec request that runs `exe` for `req`.
pub fn exec_request(exe: &Path, req: &ServiceRequest) -> ExecRequest {
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    if !req.arg.is_empty() {
        argv.push(req.arg.clone());
    }
    ExecRequest {
        argv,
        user: req.user.clone(),
        env: vec![
            (ENV_REMOTE_DOMAIN.into(), req.source.clone()),
            (ENV_SERVICE_ARGUMENT.into(), req.arg.clone()),
            (ENV_SERVICE.into(), req.service.clone()),
        ],
        cwd: None,
    }
}

/// Runs the service for one accepted `Service` stream.
pub async fn run_service(req: ServiceRequest, stream: Stream) {
    let id = stream.id();
    let Some(exe) = find_service(&rpc_path(), &req.service) else {
        tracing::info!(stream = id, service = %req.service, source = %req.source, "no such service");
        let reason = format!("the target domain has no service {}", req.service);
        if let Err(e) = exec::reject(stream, &reason).await {
            tracing::debug!(stream = id, error = %e, "reporting a missing service");
        }
        return;
    };
    tracing::info!(stream = id, service = %req.service, arg = %req.arg, source = %req.source, exe = %exe.display(), "service call");
    crate::spawn::run_exec(exec_request(&exe, &req), stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order_and_refusals() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("svc.One"), "").unwrap();
        std::fs::write(b.path().join("svc.Two"), "").unwrap();
        std::fs::write(a.path().join("svc.Two"), "").unwrap();
        std::fs::create_dir(a.path().join("svc.Dir")).unwrap();
        let path = vec![a.path().to_owned(), b.path().to_owned()];
        assert_eq!(
            find_service(&path, "svc.One"),
            Some(b.path().join("svc.One"))
        );
        assert_eq!(
            find_service(&path, "svc.Two"),
            Some(a.path().join("svc.Two"))
        );
        for bad in ["", ".", "..", "svc.Dir", "none", "../x"] {
            assert_eq!(find_service(&path, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn request_env_and_argv() {
        let req = ServiceRequest {
            service: "test.Svc".into(),
            arg: "a.b".into(),
            source: "work".into(),
            user: None,
        };
        let e = exec_request(Path::new("/x/test.Svc"), &req);
        assert_eq!(e.argv, ["/x/test.Svc", "a.b"]);
        assert!(e
            .env
            .contains(&(ENV_REMOTE_DOMAIN.to_string(), "work".to_string())));
        assert!(e.validate().is_ok());
        let e = exec_request(
            Path::new("/x/test.Svc"),
            &ServiceRequest {
                arg: String::new(),
                ..req
            },
        );
        assert_eq!(e.argv, ["/x/test.Svc"]);
    }
}
