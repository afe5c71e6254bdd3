//! The exec protocol on top of streams.
//!
//! Client (domaind) opens a stream with `OpenRequest::Exec`. Channel [`STDIN`] carries the
//! client's input (then Eof); the server sends [`STDOUT`] and [`STDERR`] (each then Eof),
//! then one `ExecMessage::Exit` (or `ExecMessage::Failed` if the command could not start)
//! and Fin. The client answers with Fin. Anything else on an exec stream is a violation
//! and drops the connection.
//!
//! Service calls (protocol version 2) use the same protocol: `OpenRequest::Call` from the
//! calling domain and `OpenRequest::Service` to the target; [`relay`] joins the two, and a
//! refused call ends with `ExecMessage::Refused` instead of an exit status ([`refuse`]).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{Connection, Stream, StreamEvent, StreamReceiver, StreamSender};
use crate::error::WireError;
use crate::message::{CallRequest, ExecMessage, ExecRequest, ExitStatus, OpenRequest};

/// Channel of the command's standard input (client -> server).
pub const STDIN: u8 = 0;
/// Channel of the command's standard output (server -> client).
pub const STDOUT: u8 = 1;
/// Channel of the command's standard error (server -> client).
pub const STDERR: u8 = 2;

const CHUNK: usize = 32 * 1024;

/// domaind side: runs `req` in the domain, pumps stdin/stdout/stderr, returns the exit status.
///
/// Stdin is read until EOF or until the command has ended (whichever first); a local stdin
/// read error ends stdin with EOF. Output write errors abort the command (the stream is reset).
pub async fn run<I, O, E>(
    conn: &Connection,
    req: ExecRequest,
    stdin: I,
    stdout: O,
    stderr: E,
) -> Result<ExitStatus, WireError>
where
    I: AsyncRead + Unpin + Send,
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    let stream = conn.open(OpenRequest::Exec(req)).await?;
    run_stream(stream, stdin, stdout, stderr).await
}

/// Caller side of a service call: opens `OpenRequest::Call(req)` and pumps stdio like
/// [`run`]. A refusal is [`WireError::CallRefused`], a start failure [`WireError::ExecFailed`].
pub async fn call<I, O, E>(
    conn: &Connection,
    req: CallRequest,
    stdin: I,
    stdout: O,
    stderr: E,
) -> Result<ExitStatus, WireError>
where
    I: AsyncRead + Unpin + Send,
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    let stream = conn.open(OpenRequest::Call(req)).await?;
    run_stream(stream, stdin, stdout, stderr).await
}

/// Client side of the exec protocol on an already opened stream (see [`run`]).
pub async fn run_stream<I, O, E>(
    stream: Stream,
    mut stdin: I,
    mut stdout: O,
    mut stderr: E,
) -> Result<ExitStatus, WireError>
where
    I: AsyncRead + Unpin + Send,
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    let (tx, mut rx) = stream.split();

    let stdin_pump = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "reading stdin for exec; sending EOF");
                    0
                }
            };
            if n == 0 {
                return tx.send_eof(STDIN);
            }
            tx.send_data(STDIN, &buf[..n]).await?;
        }
    };

    let output = async {
        let mut exit = None;
        let mut eof = [false; 3];
        loop {
            match rx.recv().await? {
                StreamEvent::Data { channel, data } => {
                    let res = match channel {
                        STDOUT => stdout.write_all(&data).await,
                        STDERR => stderr.write_all(&data).await,
                        other => return Err(rx.violation(format!("exec data on channel {other}"))),
                    };
                    res.map_err(WireError::io("writing exec output"))?;
                }
                StreamEvent::Eof { channel } => match channel {
                    STDOUT => {
                        eof[1] = true;
                        stdout
                            .flush()
                            .await
                            .map_err(WireError::io("writing exec stdout"))?;
                    }
                    STDERR => {
                        eof[2] = true;
                        stderr
                            .flush()
                            .await
                            .map_err(WireError::io("writing exec stderr"))?;
                    }
                    other => return Err(rx.violation(format!("exec EOF on channel {other}"))),
                },
                StreamEvent::Message(m) => {
                    if exit.is_some() {
                        return Err(rx.violation("second exec result"));
                    }
                    match ExecMessage::decode(&m) {
                        Ok(ExecMessage::Exit(s)) => exit = Some(s),
                        Ok(ExecMessage::Failed { reason }) => {
                            return Err(WireError::ExecFailed { reason })
                        }
                        Ok(ExecMessage::Refused { reason }) => {
                            return Err(WireError::CallRefused { reason })
                        }
                        Err(e) => return Err(rx.violation(e.to_string())),
                    }
                }
                StreamEvent::Finished => {
                    return exit
                        .ok_or_else(|| rx.violation("exec stream finished without exit status"));
                }
            }
        }
    };

    let mut output = std::pin::pin!(output);
    let mut stdin_pump = std::pin::pin!(stdin_pump);
    let mut stdin_done = false;
    let result = loop {
        tokio::select! {
            r = &mut output => break r,
            r = &mut stdin_pump, if !stdin_done => {
                stdin_done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "exec stdin ended early");
                }
            }
        }
    };
    match &result {
        // The exchange completed (with a status, a start failure or a refusal): finish our half.
        Ok(_) | Err(WireError::ExecFailed { .. }) | Err(WireError::CallRefused { .. }) => {
            let _ = tx.finish();
        }
        Err(_) => tx.reset("exec aborted by client"),
    }
    result
}

/// Agent side: serves one accepted exec stream for an already spawned command.
///
/// `stdin` receives the client's input (dropped, i.e. closed, on EOF; write errors such as
/// EPIPE make the rest be discarded), `stdout`/`stderr` are read to EOF and forwarded, then
/// `wait` gives the exit status which is sent before Fin. Returns after the client finished.
/// If the client resets the stream or the connection is lost, returns the error at once
/// (dropping the pipes and `wait`); the caller decides what happens to the process.
pub async fn serve<W, O, E, F>(
    stream: Stream,
    stdin: Option<W>,
    stdout: O,
    stderr: E,
    wait: F,
) -> Result<ExitStatus, WireError>
where
    W: AsyncWrite + Unpin + Send,
    O: AsyncRead + Unpin + Send,
    E: AsyncRead + Unpin + Send,
    F: Future<Output = std::io::Result<ExitStatus>> + Send,
{
    let (tx, mut rx) = stream.split();
    let input = pump_stdin(&mut rx, stdin);
    let output = async {
        let (a, b) = tokio::join!(pump_out(&tx, STDOUT, stdout), pump_out(&tx, STDERR, stderr));
        a?;
        b?;
        let status = wait
            .await
            .map_err(WireError::io("waiting for the command"))?;
        // The client drops a connection that reports an impossible status; refuse to send one
        // (this resets only the stream).
        status.validate().map_err(WireError::InvalidRequest)?;
        tx.send_message(&ExecMessage::Exit(status).encode()).await?;
        tx.finish()?;
        Ok::<_, WireError>(status)
    };
    let mut input = std::pin::pin!(input);
    let mut output = std::pin::pin!(output);
    let mut input_done = false;
    loop {
        tokio::select! {
            out = &mut output => {
                let status = match out {
                    Ok(s) => s,
                    Err(e) => {
                        tx.reset("exec failed in the agent");
                        return Err(e);
                    }
                };
                if !input_done {
                    // Wait for the client's Fin so the stream closes cleanly.
                    input.await?;
                }
                return Ok(status);
            }
            inp = &mut input, if !input_done => {
                // An error here (reset, connection lost, violation) abandons the command at
                // once instead of waiting for output that has nowhere to go.
                inp?;
                input_done = true;
            }
        }
    }
}

/// Agent side: tells the client the command could not be started, then finishes.
pub async fn reject(stream: Stream, reason: &str) -> Result<(), WireError> {
    let reason = bounded_reason(reason);
    finish_with(stream, ExecMessage::Failed { reason }).await
}

/// Serving side of a call stream: tells the caller the call was refused by policy, then
/// finishes (the caller maps it to exit code 126).
pub async fn refuse(stream: Stream, reason: &str) -> Result<(), WireError> {
    let reason = bounded_reason(reason);
    finish_with(stream, ExecMessage::Refused { reason }).await
}

fn bounded_reason(reason: &str) -> String {
    let mut reason = reason.to_string();
    if reason.len() > crate::message::MAX_REASON_LEN {
        let mut end = crate::message::MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

async fn finish_with(stream: Stream, msg: ExecMessage) -> Result<(), WireError> {
    let (tx, mut rx) = stream.split();
    tx.send_message(&msg.encode()).await?;
    tx.finish()?;
    // Wait for the client's Fin (it sends it when it sees our result), discarding stdin.
    pump_stdin::<tokio::io::Sink>(&mut rx, None).await
}

async fn pump_stdin<W: AsyncWrite + Unpin>(
    rx: &mut StreamReceiver,
    mut stdin: Option<W>,
) -> Result<(), WireError> {
    loop {
        match rx.recv().await? {
            StreamEvent::Data {
                channel: STDIN,
                data,
            } => {
                if let Some(w) = stdin.as_mut() {
                    let res = async {
                        w.write_all(&data).await?;
                        w.flush().await
                    }
                    .await;
                    if let Err(e) = res {
                        tracing::debug!(error = %e, stream = rx.id(), "command stdin closed; discarding input");
                        stdin = None;
                    }
                }
            }
            StreamEvent::Eof { channel: STDIN } => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            StreamEvent::Finished => return Ok(()),
            StreamEvent::Data { channel, .. } | StreamEvent::Eof { channel } => {
                return Err(rx.violation(format!("exec client used channel {channel}")))
            }
            StreamEvent::Message(_) => {
                return Err(rx.violation("exec client sent a message"));
            }
        }
    }
}

async fn pump_out<R: AsyncRead + Unpin>(
    tx: &StreamSender,
    channel: u8,
    mut r: R,
) -> Result<(), WireError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(WireError::io("reading command output"))?;
        if n == 0 {
            return tx.send_eof(channel);
        }
        tx.send_data(channel, &buf[..n]).await?;
    }
}

/// Joins a call: `caller` is a stream we serve (the caller is its exec client), `service`
/// one we opened (we are its exec client). Stdin flows from the caller to the service,
/// stdout/stderr and the final message (exit status, start failure) back, each waiting for
/// the other side's credit, so a slow reader slows the writer down and nothing piles up.
/// Returns the final message forwarded. A violation by either side drops that side's
/// connection (only); an error on either side resets both streams.
pub async fn relay(caller: Stream, service: Stream) -> Result<ExecMessage, WireError> {
    let (caller_tx, mut caller_rx) = caller.split();
    let (svc_tx, mut svc_rx) = service.split();
    let up = async {
        loop {
            match caller_rx.recv().await? {
                StreamEvent::Data {
                    channel: STDIN,
                    data,
                } => match svc_tx.send_data(STDIN, &data).await {
                    Ok(()) => {}
                    // The service side finished or went away: its end decides; drop input.
                    Err(WireError::StreamFinished(_)) => {}
                    Err(e) => return Err(e),
                },
                StreamEvent::Eof { channel: STDIN } => match svc_tx.send_eof(STDIN) {
                    Ok(()) | Err(WireError::StreamFinished(_)) => {}
                    Err(e) => return Err(e),
                },
                StreamEvent::Finished => return Ok(()),
                StreamEvent::Data { channel, .. } | StreamEvent::Eof { channel } => {
                    return Err(caller_rx.violation(format!("caller used channel {channel}")))
                }
                StreamEvent::Message(_) => {
                    return Err(caller_rx.violation("caller sent a message on a call stream"))
                }
            }
        }
    };
    let down = async {
        let mut last: Option<ExecMessage> = None;
        loop {
            match svc_rx.recv().await? {
                StreamEvent::Data { channel, data } if channel == STDOUT || channel == STDERR => {
                    caller_tx.send_data(channel, &data).await?;
                }
                StreamEvent::Eof { channel } if channel == STDOUT || channel == STDERR => {
                    caller_tx.send_eof(channel)?;
                }
                StreamEvent::Message(m) => {
                    if last.is_some() {
                        return Err(svc_rx.violation("second exec result"));
                    }
                    let msg =
                        ExecMessage::decode(&m).map_err(|e| svc_rx.violation(e.to_string()))?;
                    caller_tx.send_message(&msg.encode()).await?;
                    last = Some(msg);
                }
                StreamEvent::Finished => {
                    let Some(msg) = last else {
                        return Err(svc_rx.violation("stream finished without exit status"));
                    };
                    caller_tx.finish()?;
                    return Ok(msg);
                }
                StreamEvent::Data { channel, .. } | StreamEvent::Eof { channel } => {
                    return Err(svc_rx.violation(format!("service used channel {channel}")))
                }
            }
        }
    };
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut down => {
                let msg = match r {
                    Ok(m) => m,
                    Err(e) => {
                        caller_tx.reset("the called service failed");
                        svc_tx.reset("call relay failed");
                        return Err(e);
                    }
                };
                if !up_done {
                    // The caller answers the result with its Fin.
                    if let Err(e) = (&mut up).await {
                        svc_tx.reset("caller went away");
                        return Err(e);
                    }
                }
                let _ = svc_tx.finish();
                return Ok(msg);
            }
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r {
                    caller_tx.reset("call relay failed");
                    svc_tx.reset("caller went away");
                    return Err(e);
                }
            }
        }
    }
}
