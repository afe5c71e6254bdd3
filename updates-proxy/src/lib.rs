//! The update proxy (Qubes' `qubes.UpdatesProxy`): a template has no network, yet `apt-get`
//! in it reaches the package archives.
//!
//! ```text
//! template                         domaind (policy)            net domain
//! apt -> 127.0.0.1:8082            bulkhead.UpdatesProxy        bulkhead-service-updates-proxy
//!   bulkhead-updates-forwarder  ->  @type:TemplateVM only  ->    one request, checked against
//!   (bulkhead-call per connection)                              /etc/bulkhead/updates-proxy.allow,
//!                                                               then the archive
//! ```
//!
//! - [`request`]: the proxy request a template sends (`GET http://host/path`, `CONNECT
//!   host:443`), parsed with limits; the template is not trusted to send a sane one.
//! - [`allow`]: the archives the proxy reaches (`host[:port]` lines); nothing else.
//! - [`proxy`]: one call: parse, check, connect, relay.
//! - [`forward`]: the template's side: a local listener whose connections become calls.

pub mod allow;
pub mod forward;
pub mod proxy;
pub mod request;

/// The service name (policy and rpc directory).
pub const SERVICE: &str = "bulkhead.UpdatesProxy";
/// Where apt in a template finds the proxy (Qubes uses the same port).
pub const LISTEN: &str = "127.0.0.1:8082";
/// The net domain's list of archives (from its template; see [`allow`]).
pub const ALLOW_FILE: &str = "/etc/bulkhead/updates-proxy.allow";
