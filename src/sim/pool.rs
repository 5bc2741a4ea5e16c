//! Many simulated users' media on a few threads, as the switch's media shards carry many
//! legs: each thread one epoll instance (mio) over its users' sockets and the users' timers
//! (str0m's, the 20 ms frames, the hang-up), no thread per user. A load run's harness then
//! costs what the users' WebRTC and Opus cost, not a thread each.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::user::{Running, SimUser, UserError, UserReport};

/// The token of a thread's waker (users' tokens are their slots).
const WAKER: Token = Token(usize::MAX);
/// The longest a thread sleeps with nothing due.
const IDLE: Duration = Duration::from_millis(20);
/// Timers falling due within this of each other run in one pass (a frame a millisecond
/// early or late is nothing to a 20 ms cadence; a wake-up per user per frame is a lot).
const SLACK: Duration = Duration::from_millis(1);

/// A user's call handed to a pool thread.
struct Job {
    call: Running,
    stop: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Sender<Result<UserReport, UserError>>,
}

/// One pool thread's door: its job queue and waker.
struct Door {
    jobs: mpsc::Sender<Job>,
    waker: Arc<Waker>,
}

/// Threads carrying many simulated users' media. Cheap to clone; the threads end once
/// every clone is dropped and their calls are over.
#[derive(Clone)]
pub struct UserPool {
    doors: Arc<Vec<Door>>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for UserPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPool")
            .field("threads", &self.doors.len())
            .finish_non_exhaustive()
    }
}

impl UserPool {
    /// `threads` threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<UserPool> {
        let mut doors = Vec::new();
        for n in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (jobs, queue) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("sim-users-{n}"))
                .spawn(move || serve(poll, queue))?;
            doors.push(Door { jobs, waker });
        }
        Ok(UserPool {
            doors: Arc::new(doors),
            next: Arc::default(),
        })
    }

    /// Carries `user`'s call as [`SimUser::run`] does, on one of the pool's threads.
    pub async fn run(
        &self,
        user: SimUser,
        hold: Duration,
        send_hz: f32,
        expect_hz: f32,
        stop: Arc<AtomicBool>,
    ) -> Result<UserReport, UserError> {
        let call = Running::new(user, hold, send_hz, expect_hz)?;
        let (done, report) = tokio::sync::oneshot::channel();
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.doors.len();
        let door = &self.doors[n];
        let gone = || UserError::Answer("the user pool's thread is gone".into());
        door.jobs
            .send(Job { call, stop, done })
            .map_err(|_| gone())?;
        door.waker.wake()?;
        report.await.map_err(|_| gone())?
    }
}

/// A call on a pool thread, with when it is next due.
struct Slot {
    job: Job,
    due: Instant,
}

/// One pool thread: takes jobs, reads every user's datagrams as they come, and runs each
/// user's timers as they fall due; ends once the queue is closed and no call is left.
fn serve(mut poll: Poll, queue: mpsc::Receiver<Job>) {
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut open = true;
    let mut buf = [0u8; 2048];
    let mut earliest = Instant::now();
    loop {
        let now = Instant::now();
        let wait = earliest.saturating_duration_since(now).clamp(SLACK, IDLE);
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "the user pool's poll failed");
                return;
            }
        }
        for event in &events {
            if event.token() == WAKER {
                continue;
            }
            let i = event.token().0;
            let Some(slot) = slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            loop {
                let read = slot.job.call.user.socket().recv_from(&mut buf);
                let Ok((n, from)) = read else {
                    break;
                };
                if let Err(e) = slot.job.call.receive(from, &buf[..n]) {
                    tracing::debug!(error = %e, "a simulated user's datagram failed it");
                    slot.due = Instant::now();
                    break;
                }
            }
            // What came may change what is due (the media connected: frames start now).
            slot.due = slot.due.min(slot.job.call.due());
        }
        // New calls.
        while open {
            match queue.try_recv() {
                Ok(job) => {
                    let i = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    let fd = job.call.user.socket().as_raw_fd();
                    if let Err(e) =
                        poll.registry()
                            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                    {
                        let _ = job.done.send(Err(e.into()));
                        free.push(i);
                        continue;
                    }
                    slots[i] = Some(Slot {
                        job,
                        due: Instant::now(),
                    });
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        // Timers, and calls that are over; and the next wake-up.
        let now = Instant::now();
        earliest = now + IDLE;
        for (i, entry) in slots.iter_mut().enumerate() {
            let Some(slot) = entry.as_mut() else {
                continue;
            };
            if slot.due > now + SLACK {
                earliest = earliest.min(slot.due);
                continue;
            }
            let stop = slot.job.stop.load(Ordering::Relaxed);
            match slot.job.call.tick(now, stop) {
                Ok(Some(due)) => {
                    slot.due = due;
                    earliest = earliest.min(due);
                }
                over => {
                    let Some(done) = entry.take() else {
                        continue;
                    };
                    let fd = done.job.call.user.socket().as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    let report = over.map(|_| done.job.call.finish());
                    let _ = done.job.done.send(report);
                    free.push(i);
                }
            }
        }
        if !open && slots.iter().all(Option::is_none) {
            return;
        }
    }
}
