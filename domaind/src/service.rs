//! The D-Bus object `/org/bulkhead/Domaind1` (interface `org.bulkhead.Domaind1`).
//!
//! Every method first checks the caller ([`crate::access`]), then hands over to the
//! [`Manager`]. zbus runs each call in its own task, so a long `Run` does not hold up others.
//!
//! File descriptors passed by callers: the copies handed to our methods are close-on-exec,
//! but zbus keeps the descriptors it received (without `MSG_CMSG_CLOEXEC`) in the message
//! until the call ends, so a sandbox launcher or VMM spawned meanwhile inherits them. The
//! launcher and its log writer therefore close every descriptor above 2 (bulkhead-sandbox),
//! and domaind marks every descriptor but the VMM's own close-on-exec before it execs the
//! VMM (`vm::launch`); the tests `caller_fds_do_not_leak_into_domains` and
//! `vm_domain_lifecycle_on_software_kvm` check that no process outside domaind holds them.

use std::collections::HashMap;
use std::sync::Arc;

use bulkhead_api::{DomainInfo, Error, OBJECT_PATH};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zbus::message::Header;
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedFd;

use crate::access::CallerCheck;
use crate::manager::{domain_name, CallerGone, Event, Manager, Stdio};

pub struct Service {
    mgr: Arc<Manager>,
    callers: CallerCheck,
}

impl Service {
    pub fn new(mgr: Arc<Manager>) -> Self {
        Self {
            mgr,
            callers: CallerCheck::default(),
        }
    }
}

impl Service {
    /// Every call: check the caller, then wait until start-up recovery is done.
    async fn enter(&self, conn: &zbus::Connection, hdr: &Header<'_>) -> Result<(), Error> {
        self.callers.check(conn, hdr).await?;
        self.mgr.wait_ready().await;
        Ok(())
    }
}

/// A future that resolves when the bus name that sent `hdr` loses its owner (the caller
/// exited or disconnected).
async fn caller_gone(conn: &zbus::Connection, hdr: &Header<'_>) -> Result<CallerGone, Error> {
    let Some(sender) = hdr.sender().map(|s| s.to_owned()) else {
        return Ok(Box::pin(std::future::pending()));
    };
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let fdo = |e: zbus::fdo::Error| Error::ZBus(e.into());
    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, sender.as_str())])
        .await?;
    // Subscribed; now make sure it did not leave before that.
    let present = dbus
        .name_has_owner(BusName::Unique(sender.clone()))
        .await
        .map_err(fdo)?;
    Ok(Box::pin(async move {
        if !present {
            return;
        }
        while let Some(sig) = changes.next().await {
            match sig.args() {
                Ok(a) if a.new_owner().is_none() => return,
                Ok(_) => {}
                Err(e) => debug!(error = %e, "bad NameOwnerChanged"),
            }
        }
        std::future::pending::<()>().await
    }))
}

fn argv(v: Vec<String>) -> Result<Vec<String>, Error> {
    if v.is_empty() {
        return Err(Error::InvalidProperty(
            "no command given (argv is empty)".into(),
        ));
    }
    Ok(v)
}

#[zbus::interface(name = "org.bulkhead.Domaind1")]
impl Service {
    async fn list(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<DomainInfo>, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self.mgr.list())
    }

    async fn get_properties(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<HashMap<String, String>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.get_properties(&domain_name(&name)?)
    }

    async fn set_property(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        prop: String,
        value: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .set_property(&domain_name(&name)?, &prop, &value)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        class: String,
        template: String,
        label: String,
        props: HashMap<String, String>,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .create(&domain_name(&name)?, &class, &template, &label, props)
            .await
    }

    #[zbus(name = "Clone")]
    async fn clone_domain(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        source: String,
        dest: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .clone_domain(&domain_name(&source)?, &domain_name(&dest)?)
            .await
    }

    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.remove(&domain_name(&name)?).await
    }

    async fn start(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.start(&domain_name(&name)?).await
    }

    async fn shutdown(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        timeout_secs: u32,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.shutdown(&domain_name(&name)?, timeout_secs).await
    }

    async fn kill(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.kill(&domain_name(&name)?).await
    }

    async fn pause(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.pause(&domain_name(&name)?).await
    }

    async fn unpause(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.unpause(&domain_name(&name)?).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        argv_in: Vec<String>,
        user: String,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, Error> {
        self.enter(conn, &hdr).await?;
        let argv = argv(argv_in)?;
        let gone = caller_gone(conn, &hdr).await?;
        let io = Stdio {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        self.mgr
            .run(&domain_name(&name)?, argv, &user, io, gone)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_disposable(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        base: String,
        argv_in: Vec<String>,
        user: String,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(String, i32), Error> {
        self.enter(conn, &hdr).await?;
        let argv = argv(argv_in)?;
        let gone = caller_gone(conn, &hdr).await?;
        let io = Stdio {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        self.mgr.run_disposable(&base, argv, &user, io, gone).await
    }

    async fn build_template(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        progress: OwnedFd,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .build_template(&domain_name(&name)?, progress.into())
            .await
    }

    async fn list_templates(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<bulkhead_api::TemplateInfo>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.list_templates().await
    }

    async fn clone_template(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        source: String,
        dest: String,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .clone_template(&domain_name(&source)?, &domain_name(&dest)?)
            .await
    }

    async fn revert_template(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.revert_template(&domain_name(&name)?).await
    }

    async fn log_path(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.log_path(&domain_name(&name)?)
    }

    async fn open_log(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<OwnedFd, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.open_log(&domain_name(&name)?).map(OwnedFd::from)
    }

    /// `OpenConsole(name s) -> h`: the console input of running VM domain `name`.
    async fn open_console(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<OwnedFd, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .open_console(&domain_name(&name)?)
            .map(OwnedFd::from)
    }

    /// `OpenGui(name s) -> h`: one end of a socketpair carrying the GUI protocol of running
    /// domain `name` (contract E).
    async fn open_gui(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<OwnedFd, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .open_gui(&domain_name(&name)?)
            .await
            .map(OwnedFd::from)
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        target: String,
        service: String,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, Error> {
        self.enter(conn, &hdr).await?;
        let gone = caller_gone(conn, &hdr).await?;
        let io = Stdio {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        self.mgr.dom0_call(&target, &service, io, gone).await
    }

    async fn register_ask_agent(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call carries no sender name".into()))?;
        self.mgr.calls().register_ask_agent(sender.as_str());
        Ok(())
    }

    async fn evaluate_paste(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        source: String,
        target: String,
    ) -> Result<bool, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self.mgr.evaluate_paste(&source, &target))
    }

    async fn last_decision(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        source: String,
        target: String,
    ) -> Result<(String, String, String, u64), Error> {
        self.enter(conn, &hdr).await?;
        match self.mgr.calls().last_decision(&source, &target) {
            Some(d) => Ok((d.service, d.outcome.to_owned(), d.detail, d.at)),
            None => Err(Error::InvalidArgument(format!(
                "no call from '{source}' to '{target}' since domaind started"
            ))),
        }
    }

    async fn check_policy(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<(String, u32, String)>, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self.mgr.calls().check_installed())
    }

    async fn check_policy_text(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        file_name: String,
        text: String,
    ) -> Result<Vec<(String, u32, String)>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.calls().check_text(&file_name, &text)
    }

    async fn firewall_list(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
    ) -> Result<Vec<String>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.firewall_list(&domain_name(&domain)?).await
    }

    async fn firewall_add(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
        rule: String,
        position: i32,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.firewall_add(&domain, &rule, position).await
    }

    async fn firewall_del(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
        index: u32,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.firewall_del(&domain_name(&domain)?, index).await
    }

    async fn firewall_del_rule(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
        rule: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr
            .firewall_del_rule(&domain_name(&domain)?, &rule)
            .await
    }

    async fn firewall_reset(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.firewall_reset(&domain_name(&domain)?).await
    }

    async fn list_policy_files(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<(String, String)>, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self.mgr.list_policy_files())
    }

    async fn read_policy_file(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.read_policy_file(&name)
    }

    async fn write_policy_file(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
        text: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.write_policy_file(&name, &text).await
    }

    async fn delete_policy_file(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        name: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.delete_policy_file(&name).await
    }

    async fn list_applications(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
    ) -> Result<Vec<(String, String, String)>, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self
            .mgr
            .list_applications(&domain)
            .await?
            .into_iter()
            .map(|e| (e.id, e.name, e.icon.unwrap_or_default()))
            .collect())
    }

    async fn get_application_icon(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
        desktop_id: String,
    ) -> Result<Vec<u8>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.application_icon(&domain, &desktop_id).await
    }

    async fn run_application(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
        desktop_id: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.run_application(&domain, &desktop_id).await
    }

    async fn get_usage(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        domain: String,
    ) -> Result<(u64, u64), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.usage(&domain_name(&domain)?)
    }

    async fn usb_list(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<crate::usb::UsbRow>, Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.usb_list().await
    }

    async fn usb_attach(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        busid: String,
        domain: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.usb_attach(&busid, &domain).await
    }

    async fn usb_detach(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        busid: String,
    ) -> Result<(), Error> {
        self.enter(conn, &hdr).await?;
        self.mgr.usb_detach(&busid).await
    }

    async fn usb_status(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<String, Error> {
        self.enter(conn, &hdr).await?;
        Ok(self.mgr.usb_status())
    }

    #[zbus(signal)]
    async fn state_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        state: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress(
        emitter: &SignalEmitter<'_>,
        name: &str,
        step: &str,
        done: u32,
        total: u32,
    ) -> zbus::Result<()>;

    /// `CallDenied(source s, target s, service s, reason s)`: a call was refused (policy
    /// deny, the user's deny, or no answer to an ask); `service` is `SERVICE[+ARG]`.
    #[zbus(signal)]
    async fn call_denied(
        emitter: &SignalEmitter<'_>,
        source: &str,
        target: &str,
        service: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}

/// Forward manager events to the bus as signals until the channel closes.
pub async fn forward_events(conn: zbus::Connection, mut rx: mpsc::UnboundedReceiver<Event>) {
    let emitter = match SignalEmitter::new(&conn, OBJECT_PATH) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot emit signals");
            return;
        }
    };
    while let Some(ev) = rx.recv().await {
        let r = match &ev {
            Event::StateChanged { name, state } => {
                Service::state_changed(&emitter, name, state).await
            }
            Event::Progress {
                name,
                step,
                done,
                total,
            } => Service::progress(&emitter, name, step, *done, *total).await,
            Event::CallDenied {
                source,
                target,
                service,
                reason,
            } => Service::call_denied(&emitter, source, target, service, reason).await,
        };
        if let Err(e) = r {
            debug!(error = %e, "signal not sent");
        }
    }
}
