//! The per-device worker: a thread that installs the device seccomp filter, then serves queue
//! notifications and backend fds with one epoll loop until the transport stops it.

use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, IrqLine, Result};

/// Tokens below this are queue indices (and the stop token); a worker registers its own fds
/// with tokens at or above it.
pub const FIRST_BACKEND_TOKEN: u64 = 1 << 32;
const STOP_TOKEN: u64 = FIRST_BACKEND_TOKEN - 1;

/// The part of a device that runs after activation. All methods run on the worker thread
/// (or inline, on the caller's thread, in tests and fuzzing).
pub trait Worker: Send {
    /// Registers backend fds on `ep` (tokens >= [`FIRST_BACKEND_TOKEN`]).
    fn init(&mut self, _ep: &Epoll) -> Result<()> {
        Ok(())
    }
    /// The driver notified queue `index`. Must do bounded work (at most one pass over the
    /// queue). An error means the queue is unusable: the device then needs a reset.
    fn queue_notified(&mut self, ep: &Epoll, index: usize) -> Result<()>;
    /// A backend fd registered with `token` is ready.
    fn backend_event(&mut self, _ep: &Epoll, _token: u64, _events: EventSet) -> Result<()> {
        Ok(())
    }
    /// Runs after every batch of events and on timeouts.
    fn tick(&mut self, _ep: &Epoll) -> Result<()> {
        Ok(())
    }
    /// epoll timeout in milliseconds (-1: none).
    fn timeout_ms(&self) -> i32 {
        -1
    }
}

/// A device's worker thread. It installs the device seccomp filter once, then runs one
/// activation's worker at a time, for the transport's life. Started early (see
/// [`crate::MmioTransport::start_worker_thread`]), it lets a vCPU thread that writes DRIVER_OK
/// only hand work over a channel: that thread never creates a thread, so its own filter needs
/// neither clone nor any of the syscalls a worker makes (a new thread would inherit its
/// creator's filter).
pub(crate) struct WorkerThread {
    jobs: Option<mpsc::Sender<Job>>,
    stop: EventFd,
    /// Closed (or sent to) when the running job has returned.
    running: Option<mpsc::Receiver<()>>,
    handle: Option<JoinHandle<()>>,
}

struct Job {
    worker: Box<dyn Worker>,
    queue_evts: Vec<EventFd>,
    done: mpsc::Sender<()>,
}

impl WorkerThread {
    pub(crate) fn spawn(
        kind: &str,
        filter: Option<Arc<seccompiler::BpfProgram>>,
        irq: Arc<IrqLine>,
        needs_reset: Arc<AtomicBool>,
    ) -> Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::io("eventfd", e))?;
        let stop2 = stop.try_clone().map_err(|e| Error::io("dup eventfd", e))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let name = format!("virtio-{kind}");
        let kind_owned = kind.to_string();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || serve_jobs(&kind_owned, &rx, &stop2, filter, &irq, &needs_reset))
            .map_err(|e| Error::io(format!("spawn thread {name}"), e))?;
        Ok(WorkerThread {
            jobs: Some(jobs),
            stop,
            running: None,
            handle: Some(handle),
        })
    }

    /// Runs `worker` on the thread (after stopping the previous one, if any).
    pub(crate) fn start(
        &mut self,
        worker: Box<dyn Worker>,
        queue_evts: Vec<EventFd>,
    ) -> Result<()> {
        self.finish();
        let (done, running) = mpsc::channel();
        let job = Job {
            worker,
            queue_evts,
            done,
        };
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| Error::Worker("the device's worker thread has exited".into()))?;
        self.running = Some(running);
        Ok(())
    }

    /// Stops the running worker, if any, and waits until it has returned.
    pub(crate) fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            if let Err(e) = self.stop.write(1) {
                crate::error_limited!(error = %e, "virtio: cannot signal the worker to stop");
                return;
            }
            // A message or a closed channel: either way the job is over.
            let _ = running.recv();
            // Clear the stop (nonblocking) so the next job does not see it; the job may have
            // returned on its own before it was written.
            let _ = self.stop.read();
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.finish();
        // Closing the channel ends the thread.
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                crate::error_limited!("virtio: worker thread panicked");
            }
        }
    }
}

/// The body of a [`WorkerThread`].
fn serve_jobs(
    kind: &str,
    jobs: &mpsc::Receiver<Job>,
    stop: &EventFd,
    filter: Option<Arc<seccompiler::BpfProgram>>,
    irq: &IrqLine,
    needs_reset: &AtomicBool,
) {
    let filtered = match &filter {
        Some(prog) => seccompiler::apply_filter(prog)
            .map_err(|e| format!("cannot install the worker's seccomp filter: {e}")),
        None => Ok(()),
    };
    while let Ok(job) = jobs.recv() {
        let failure = match &filtered {
            Err(e) => Some(e.clone()),
            Ok(()) => {
                let mut worker = job.worker;
                let res = catch_unwind(AssertUnwindSafe(|| {
                    run_loop(worker.as_mut(), &job.queue_evts, stop)
                }));
                match res {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("worker panicked".to_string()),
                }
            }
        };
        if let Some(msg) = failure {
            crate::error_limited!(device = %kind, error = %msg, "virtio: device failed; it needs a reset");
            needs_reset.store(true, Ordering::SeqCst);
            irq.signal_config();
        }
        let _ = job.done.send(());
    }
}

fn run_loop(worker: &mut dyn Worker, queue_evts: &[EventFd], stop: &EventFd) -> Result<()> {
    let ep = Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
    ep.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP_TOKEN),
    )
    .map_err(|e| Error::io("epoll add", e))?;
    for (i, evt) in queue_evts.iter().enumerate() {
        ep.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )
        .map_err(|e| Error::io("epoll add", e))?;
    }
    worker.init(&ep)?;
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match ep.wait(worker.timeout_ms(), &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("epoll_wait", e)),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == STOP_TOKEN {
                return Ok(());
            } else if token < FIRST_BACKEND_TOKEN {
                let idx = token as usize;
                if let Some(evt) = queue_evts.get(idx) {
                    // Nonblocking: EAGAIN just means someone else already drained it.
                    let _ = evt.read();
                    worker.queue_notified(&ep, idx)?;
                }
            } else {
                worker.backend_event(&ep, token, ev.event_set())?;
            }
        }
        worker.tick(&ep)?;
    }
}

/// A worker run on the caller's thread (tests, fuzzing): a notification is served before
/// the register write returns, so results are deterministic.
pub(crate) struct InlineWorker {
    worker: Box<dyn Worker>,
    ep: Epoll,
}

impl InlineWorker {
    pub(crate) fn new(mut worker: Box<dyn Worker>) -> Result<Self> {
        let ep = Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
        worker.init(&ep)?;
        Ok(InlineWorker { worker, ep })
    }

    pub(crate) fn notify(&mut self, index: usize) -> Result<()> {
        self.worker.queue_notified(&self.ep, index)?;
        self.worker.tick(&self.ep)
    }

    /// Serves ready backend fds once without blocking.
    pub(crate) fn poll_backends(&mut self) -> Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        let n = self
            .ep
            .wait(0, &mut events)
            .map_err(|e| Error::io("epoll_wait", e))?;
        for ev in &events[..n] {
            self.worker
                .backend_event(&self.ep, ev.data(), ev.event_set())?;
        }
        self.worker.tick(&self.ep)
    }
}
