//! Waiting on the kernel. A pidfd (Linux 5.3+) becomes readable the moment its process exits,
//! so the host's reaper learns of a local owner's death at once instead of at its next look.
//! The heartbeat thread's stop signal is a pipe, so one `poll` waits for either.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Stop was asked for (or the asking side is gone).
    Stop,
    /// A watched process exited.
    Died,
    Timeout,
}

/// The end that asks the thread to stop.
pub struct StopSender(OwnedFd);

/// The end the thread waits on.
pub struct StopSignal(OwnedFd);

pub fn stop_signal() -> std::io::Result<(StopSender, StopSignal)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new file descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((StopSender(write), StopSignal(read)))
}

impl StopSender {
    pub fn send(&self) {
        let byte = [1u8];
        // SAFETY: writes one byte from a live buffer to a descriptor we own; a full pipe (a
        // stop already pending) is fine to ignore.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), byte.as_ptr().cast(), 1) };
    }
}

/// The local processes whose exit should wake the reaper.
#[derive(Default)]
pub struct Watch {
    fds: HashMap<u32, OwnedFd>,
    /// The kernel has no pidfd_open: wait for the timeout alone.
    unsupported: bool,
}

impl Watch {
    /// Watches exactly these pids from now on; returns those already gone (no such process),
    /// which are not watched.
    pub fn watch_only(&mut self, pids: &[u32]) -> Vec<u32> {
        self.fds.retain(|pid, _| pids.contains(pid));
        let mut gone = Vec::new();
        if self.unsupported {
            return gone;
        }
        for &pid in pids {
            if self.fds.contains_key(&pid) {
                continue;
            }
            let Ok(raw) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
            if fd >= 0 {
                // SAFETY: a new descriptor that nothing else owns.
                let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                self.fds.insert(pid, owned);
            } else {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOSYS) => {
                        self.unsupported = true;
                        return gone;
                    }
                    Some(libc::ESRCH) => gone.push(pid),
                    _ => {}
                }
            }
        }
        gone
    }

    pub fn watched(&self) -> usize {
        self.fds.len()
    }

    /// Waits until stop is asked, a watched process exits, or `timeout` passes.
    pub fn wait(&mut self, stop: &StopSignal, timeout: Duration) -> Wake {
        let pids: Vec<u32> = self.fds.keys().copied().collect();
        let mut polls: Vec<libc::pollfd> = std::iter::once(stop.0.as_raw_fd())
            .chain(
                pids.iter()
                    .filter_map(|p| self.fds.get(p).map(|fd| fd.as_raw_fd())),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: polls is a live array of pollfd of the length given.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        if ready <= 0 {
            // A timeout, or a signal interrupted the wait: the caller looks at the clock.
            return Wake::Timeout;
        }
        if polls[0].revents != 0 {
            return Wake::Stop;
        }
        let mut died = false;
        for (pid, poll) in pids.iter().zip(&polls[1..]) {
            if poll.revents != 0 {
                self.fds.remove(pid);
                died = true;
            }
        }
        if died {
            Wake::Died
        } else {
            Wake::Timeout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_watched_child_that_exits_wakes_the_wait_at_once() {
        let (_sender, stop) = stop_signal().expect("pipe");
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep");
        let mut watch = Watch::default();
        watch.watch_only(&[child.id()]);
        assert_eq!(watch.watched(), 1);
        let started = Instant::now();
        assert_eq!(watch.wait(&stop, Duration::from_secs(10)), Wake::Died);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(watch.watched(), 0, "a dead process is no longer watched");
        let _ = child.wait();
    }

    #[test]
    fn stop_and_timeout_end_the_wait() {
        let (sender, stop) = stop_signal().expect("pipe");
        let mut watch = Watch::default();
        assert_eq!(watch.wait(&stop, Duration::from_millis(20)), Wake::Timeout);
        sender.send();
        assert_eq!(watch.wait(&stop, Duration::from_secs(10)), Wake::Stop);
        let (sender, stop) = stop_signal().expect("pipe");
        drop(sender);
        assert_eq!(
            watch.wait(&stop, Duration::from_secs(10)),
            Wake::Stop,
            "the asking side gone"
        );
    }

    #[test]
    fn pids_that_do_not_exist_are_not_watched() {
        let mut watch = Watch::default();
        assert_eq!(
            watch.watch_only(&[u32::MAX - 5]),
            Vec::<u32>::new(),
            "not a pid at all"
        );
        assert_eq!(watch.watched(), 0);
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        let _ = child.wait();
        assert_eq!(watch.watch_only(&[pid]), vec![pid], "reaped: gone");
    }
}
