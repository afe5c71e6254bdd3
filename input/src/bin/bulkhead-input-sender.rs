//! `bulkhead-input-sender /dev/input/eventN [keyboard|mouse]`: grabs the device and writes
//! its input stream (bulkhead_input::proto) to stdout, for dom0 to read, until the device
//! goes away or stdout closes. Runs in the usb domain as a service whose stdout domaind
//! reads. Logs go to stderr (`BULKHEAD_LOG`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_input::evdev::EvdevReader;
use bulkhead_input::proto::{encode, encode_events, Kind, Msg};

fn main() -> ExitCode {
    bulkhead_logging::init("info");
    let mut args = std::env::args_os().skip(1);
    let (Some(path), kind, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bulkhead-input-sender /dev/input/eventN [keyboard|mouse]");
        return ExitCode::from(2);
    };
    let kind = match kind.as_ref().and_then(|k| k.to_str()) {
        None => None,
        Some("keyboard") => Some(Kind::Keyboard),
        Some("mouse") => Some(Kind::Mouse),
        Some(other) => {
            eprintln!("bulkhead-input-sender: unknown kind {other:?} (keyboard or mouse)");
            return ExitCode::from(2);
        }
    };
    match run(PathBuf::from(path), kind) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Evdev(#[from] bulkhead_input::evdev::EvdevError),
    #[error("write to stdout: {0}")]
    Stdout(std::io::Error),
}

fn run(path: PathBuf, kind: Option<Kind>) -> Result<(), SendError> {
    let mut reader = EvdevReader::open(&path, kind)?;
    let mut out = std::io::stdout().lock();
    let mut send = |bytes: &[u8]| -> Result<(), SendError> {
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(SendError::Stdout)
    };
    send(&encode(&Msg::Hello(reader.hello().clone())))?;
    while let Some(batch) = reader.next_batch()? {
        send(&encode_events(&batch))?;
    }
    tracing::info!(path = %path.display(), "device gone");
    Ok(())
}
