//! `OpenGui`: dom0's access to a running domain's GUI stream (contract E). domaind opens an
//! `OpenRequest::Gui` stream to the domain's agent (which relays it to the gui-agent) and
//! hands the caller one end of a unix socketpair; a task relays the other end to the stream.
//! domaind does not parse the GUI protocol: the dom0 side (bulkhead-gui-host) checks it.

use std::os::fd::OwnedFd;

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_wire::{OpenRequest, GUI_VERSION};
use tracing::{info, warn};

use super::Manager;

impl Manager {
    /// Opens the GUI stream of running domain `name`; returns dom0's end of the socketpair.
    pub async fn open_gui(&self, dn: &DomainName) -> Result<OwnedFd, Error> {
        let name = dn.as_str();
        let conn = self.running_agent_conn(dn).await?;
        if u16::from(conn.version()) < GUI_VERSION {
            return Err(Error::Agent(format!(
                "the agent of '{name}' speaks channel protocol {}, GUI streams need {GUI_VERSION}; update the domain's guest tools",
                conn.version()
            )));
        }
        let stream = conn
            .open(OpenRequest::Gui)
            .await
            .map_err(|e| Error::Agent(format!("opening the GUI stream of '{name}': {e}")))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::Io(format!("creating the GUI socketpair: {e}")))?;
        ours.set_nonblocking(true)
            .map_err(|e| Error::Io(format!("GUI socketpair: {e}")))?;
        let ours = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| Error::Io(format!("GUI socketpair: {e}")))?;
        let domain = name.to_owned();
        tokio::spawn(async move {
            match bulkhead_wire::relay::relay_bytes(stream, ours).await {
                Ok(()) => info!(domain, "GUI stream closed"),
                Err(e) => warn!(domain, error = %e, "GUI stream ended with an error"),
            }
        });
        info!(domain = name, "GUI stream opened");
        Ok(theirs.into())
    }
}
