//! wl_output (with xdg-output): one headless output.

use smithay::delegate_output;
use smithay::wayland::output::OutputHandler;

use crate::compositor::state::Agent;

impl OutputHandler for Agent {}

delegate_output!(Agent);
