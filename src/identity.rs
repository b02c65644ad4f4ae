//! Who is calling: host name, pid, and what makes this process start unique in the kernel's own
//! frame (its start in clock ticks since boot, the boot it runs in, its pid namespace), and whom
//! it works for when it is one of Matomo's archiving children. Also the same facts about any
//! other local pid, which is how a reaper proves that an owner is gone or that its pid now
//! belongs to someone else.

use std::fs;

/// Matomo's `processing_host` column is VARCHAR(100); a longer name would be cut by the server
/// and then never match our fenced statements, so we cut it the same way first.
pub const MAX_HOST_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// What PHP's gethostname() returns; None where that fails (Matomo then stores NULL).
    pub host: Option<String>,
    pub pid: u32,
    /// Wall-clock start of this process, Unix seconds (10 ms resolution, from /proc). For people
    /// only: a clock step moves it, so no decision compares it with a registered value.
    pub started_at: Option<f64>,
    /// Start of this process in clock ticks after boot (/proc/self/stat field 22): with the boot
    /// id, pid namespace and pid it names one process start, and no clock can move it.
    pub start_ticks: Option<u64>,
    pub boot_id: Option<String>,
    /// Inode of /proc/self/ns/pid: processes in different pid namespaces may share a pid.
    pub pid_namespace: Option<u64>,
    /// For a Matomo archiving child (`climulti:request ... runid=<pid>`), the pid of the
    /// `core:archive` process whose claim it works on.
    pub works_for: Option<u32>,
}

impl Identity {
    /// The facts about the calling process, read fresh (a forked child has a new pid).
    pub fn current() -> Identity {
        let pid = std::process::id();
        let status = process_status("self");
        Identity {
            host: host_name(),
            pid,
            started_at: status.map(|s| s.started_at),
            start_ticks: status.map(|s| s.start_ticks),
            boot_id: boot_id(),
            pid_namespace: pid_namespace("self"),
            works_for: works_for(pid),
        }
    }

    /// A Matomo archiving child: it works on its parent's claims, never reaps, and leaves the
    /// parent's rows alone when it ends.
    pub fn is_archiving_child(&self) -> bool {
        self.works_for.is_some()
    }

    /// `process_id` as Matomo stores it: the pid in decimal.
    pub fn process_id(&self) -> String {
        self.pid.to_string()
    }
}

pub fn host_name() -> Option<String> {
    let name = hostname::get().ok()?.to_string_lossy().into_owned();
    if name.is_empty() {
        return None;
    }
    Some(name.chars().take(MAX_HOST_CHARS).collect())
}

pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub fn pid_namespace(pid: &str) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    parse_namespace_link(&link.to_string_lossy())
}

/// `pid:[4026531836]` -> 4026531836
fn parse_namespace_link(link: &str) -> Option<u64> {
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// What /proc says about one local process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStatus {
    /// The state letter (R, S, D, Z, ...).
    pub state: char,
    /// Start in clock ticks after boot: exact, and immune to clock steps.
    pub start_ticks: u64,
    /// The same start as Unix seconds on this machine's clock as it reads now (boot time from
    /// /proc/stat moves with every clock step, so this is in the current clock's frame).
    pub started_at: f64,
}

pub fn process_status(pid: &str) -> Option<ProcessStatus> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = state_from_stat(&stat)?;
    let start_ticks = start_ticks_from_stat(&stat)?;
    let boot_time = boot_time_from_proc_stat(&fs::read_to_string("/proc/stat").ok()?)?;
    Some(ProcessStatus {
        state,
        start_ticks,
        started_at: boot_time as f64 + start_ticks as f64 / clock_ticks_per_second(),
    })
}

/// Whether a command line (NUL separated) is a Matomo archiving child's, or the shell that is
/// starting one (`sh -c '... console climulti:request ... runid=N ... &'`): CliMulti starts
/// each child through a shell, and between the shell's fork and its exec of PHP the child is
/// only that shell. A reaper that looked then and saw no child would release a claim whose
/// child is a moment from archiving.
fn is_archiving_child_cmdline(cmdline: &[u8]) -> bool {
    cmdline.split(|b| *b == 0).any(|a| {
        a == b"climulti:request"
            || a.split(|b| b.is_ascii_whitespace())
                .any(|word| word == b"climulti:request" || word == b"'climulti:request'")
    })
}

/// The pid the calling process works for, if it is a Matomo archiving child: the `runid` on
/// its command line, or, for a batch of one request (which Matomo runs in the foreground and
/// without `runid`), its nearest ancestor that is not a shell: the `core:archive` process.
fn works_for(me: u32) -> Option<u32> {
    let cmdline = fs::read("/proc/self/cmdline").ok()?;
    if !is_archiving_child_cmdline(&cmdline) {
        return None;
    }
    archiving_child_of(&cmdline).or_else(|| {
        let mut pid = parent_of(me)?;
        for _ in 0..4 {
            let argv0 = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let name = argv0.split(|b| *b == 0).next()?;
            let base = name.rsplit(|b| *b == b'/').next()?;
            if !matches!(base, b"sh" | b"bash" | b"dash" | b"zsh" | b"busybox") {
                return (pid > 1).then_some(pid);
            }
            pid = parent_of(pid)?;
        }
        None
    })
}

/// Field 5 of /proc/<pid>/stat: the process group.
fn process_group_of(pid: u32) -> Option<u32> {
    numeric_stat_field(pid, 5)
}

/// Field 4 of /proc/<pid>/stat: the parent.
fn parent_of(pid: u32) -> Option<u32> {
    numeric_stat_field(pid, 4)
}

/// A numeric field (3 or later) of /proc/<pid>/stat, counted after the command, which may
/// itself contain spaces and parentheses.
fn numeric_stat_field(pid: u32, field: usize) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Whether this process is a detached archiving child: its command line names the process it
/// works for (`runid=`), which /proc shows for as long as it runs, whatever became of that
/// process. (A batch of one names none: its parent is known only from its ancestry at start.)
pub fn names_whom_it_works_for() -> bool {
    fs::read("/proc/self/cmdline")
        .ok()
        .is_some_and(|c| archiving_child_of(&c).is_some())
}

/// The `core:archive` pid a Matomo archiving child works for, from its command line (NUL
/// separated): `php console climulti:request ... 'module=API&...&pid=..&runid=<pid>'`.
pub fn archiving_child_of(cmdline: &[u8]) -> Option<u32> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !is_archiving_child_cmdline(cmdline) {
        return None;
    }
    args.iter().find_map(|arg| {
        let text = std::str::from_utf8(arg).ok()?;
        text.split(['&', '?', ' ', '\'', '"'])
            .find_map(|part| part.strip_prefix("runid="))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
    })
}

/// Live local Matomo archiving children (a zombie has ended), each with its command line.
fn live_archiving_children() -> Vec<(u32, Vec<u8>)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let live = is_archiving_child_cmdline(&cmdline)
                && process_status(&pid.to_string()).is_some_and(|s| !is_dead_state(s.state));
            live.then_some((pid, cmdline))
        })
        .collect()
}

/// Live local Matomo archiving children, as (child pid, the pid their `runid` names): while
/// one lives, the claims of that pid are being worked on, whatever became of it.
pub fn archiving_children() -> Vec<(u32, u32)> {
    live_archiving_children()
        .into_iter()
        .filter_map(|(pid, cmdline)| {
            // A batch of one runs in the foreground without runid: it stays in the process
            // group of the core:archive that started it, even after that process died.
            let owner = archiving_child_of(&cmdline).or_else(|| process_group_of(pid))?;
            Some((pid, owner))
        })
        .collect()
}

/// Live local archiving children whose command line names nobody (`runid=`): a batch of one,
/// run in the foreground. Until it registers (at its request's start), nothing ties it to the
/// `core:archive` that started it once that process is gone.
pub fn unnamed_archiving_children() -> Vec<u32> {
    live_archiving_children()
        .into_iter()
        .filter(|(_, cmdline)| archiving_child_of(cmdline).is_none())
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether a state letter means the process has ended: a zombie (Z) has died and only waits
/// for its parent to collect it; X is dead.
pub fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Field 3 of /proc/<pid>/stat, right after the command.
fn state_from_stat(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether a pid exists in the caller's pid namespace. Asks the kernel, not /proc: a /proc
/// mounted with hidepid hides other users' processes, which must not read as gone.
pub fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether /proc hides other users' processes from us (hidepid, or systemd's ProtectProc):
/// then a process we cannot see may still run.
pub fn proc_hides_other_users() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| mount_hides_processes(&m))
        .unwrap_or(true)
}

/// From /proc/self/mountinfo: the /proc mount's options hide processes (hidepid=1, 2,
/// invisible or noaccess).
fn mount_hides_processes(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/proc"))
        .filter_map(|l| l.split(" - ").nth(1))
        .any(|fs| {
            fs.split_whitespace().nth(2).is_some_and(|options| {
                options.split(',').any(|o| {
                    matches!(
                        o.strip_prefix("hidepid="),
                        Some("1" | "2" | "invisible" | "noaccess")
                    )
                })
            })
        })
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks after boot. Field 2 (the command)
/// may contain spaces and parentheses, so count fields after the last ')'.
fn start_ticks_from_stat(stat: &str) -> Option<u64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    // after ')' come fields 3.. ; field 22 is the 20th of them.
    after_command.split_whitespace().nth(19)?.parse().ok()
}

/// `btime` of /proc/stat: boot time in Unix seconds.
fn boot_time_from_proc_stat(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_time_field_past_a_hostile_command_name() {
        // comm "(a) b)" has spaces and parentheses; starttime is 123456.
        let stat = "4242 ((a) b)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615";
        assert_eq!(start_ticks_from_stat(stat), Some(123456));
        assert_eq!(start_ticks_from_stat("garbage"), None);
    }

    #[test]
    fn reads_the_state_letter() {
        let stat =
            "4242 ((a) b)) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000";
        assert_eq!(state_from_stat(stat), Some('Z'));
        assert!(is_dead_state('Z') && is_dead_state('X'));
        assert!(!is_dead_state('S') && !is_dead_state('R') && !is_dead_state('D'));
    }

    #[test]
    fn the_shell_that_starts_an_archiving_child_counts_as_one() {
        let shell = b"sh\0-c\0/usr/bin/php -q /var/www/matomo/console climulti:request -q \
            --matomo-domain=localhost 'module=API&method=CoreAdminHome.archiveReports&idSite=3&pid=9&runid=2168' > /dev/null 2>&1 &\0";
        assert!(is_archiving_child_cmdline(shell));
        assert_eq!(archiving_child_of(shell), Some(2168));
        assert!(!is_archiving_child_cmdline(
            b"sh\0-c\0echo climulti:requests\0"
        ));
        assert!(!is_archiving_child_cmdline(b"php\0console\0core:archive\0"));
    }

    #[test]
    fn finds_the_parent_of_a_matomo_archiving_child_on_its_command_line() {
        let child = b"/usr/bin/php\0/var/www/matomo/console\0climulti:request\0-q\0--matomo-domain=\0--superuser\0module=API&method=CoreAdminHome.archiveReports&idSite=1&period=day&date=2024-01-15&format=json&trigger=archivephp&pid=4242&runid=4100\0";
        assert_eq!(archiving_child_of(child), Some(4100));
        let quoted = b"php\0console\0climulti:request\0'module=API&runid=77'\0";
        assert_eq!(archiving_child_of(quoted), Some(77));
        // Not a climulti:request child, or no runid: works for nobody.
        assert_eq!(
            archiving_child_of(b"php\0console\0core:archive\0runid=5\0"),
            None
        );
        assert_eq!(
            archiving_child_of(b"php\0console\0climulti:request\0module=API\0"),
            None
        );
        assert_eq!(
            archiving_child_of(b"php\0console\0climulti:request\0runid=0\0"),
            None
        );
        assert_eq!(archiving_child_of(b""), None);
    }

    #[test]
    fn a_process_has_a_parent() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
        assert_eq!(parent_of(u32::MAX - 1), None);
    }

    #[test]
    fn sees_when_proc_hides_processes() {
        let plain = "22 28 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n";
        let hidden = "22 28 0:20 / /proc rw,nosuid shared:12 - proc proc rw,hidepid=2\n";
        let invisible = "22 28 0:20 / /proc rw - proc proc rw,hidepid=invisible,subset=pid\n";
        let elsewhere = "30 28 0:20 / /mnt/proc rw - proc proc rw,hidepid=2\n";
        assert!(!mount_hides_processes(plain));
        assert!(mount_hides_processes(hidden));
        assert!(mount_hides_processes(invisible));
        assert!(!mount_hides_processes(elsewhere));
        assert!(pid_exists(std::process::id()) && pid_exists(1));
    }

    #[test]
    fn reads_boot_time() {
        let s = "cpu  1 2 3\nintr 5\nbtime 1764379200\nprocesses 9\n";
        assert_eq!(boot_time_from_proc_stat(s), Some(1764379200));
        assert_eq!(boot_time_from_proc_stat("cpu 1\n"), None);
    }

    #[test]
    fn parses_namespace_links() {
        assert_eq!(parse_namespace_link("pid:[4026531836]"), Some(4026531836));
        assert_eq!(parse_namespace_link("net:[1]"), None);
    }

    #[test]
    fn the_current_process_is_described_by_proc() {
        let me = Identity::current();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.process_id(), std::process::id().to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let started = me.started_at.expect("linux has /proc");
        assert!(me.start_ticks.is_some());
        assert_eq!(me.works_for, None);
        // This test process started before now, and not days ago.
        assert!(
            started <= now + 1.0 && started > now - 86400.0,
            "{started} vs {now}"
        );
        assert_eq!(me.boot_id.as_deref().map(str::len), Some(36));
        assert!(me.pid_namespace.is_some());
        assert_eq!(
            me.host,
            hostname::get()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        );
    }

    #[test]
    fn other_pids_exist_or_not() {
        assert!(pid_exists(std::process::id()));
        // pid_max never reaches this.
        assert!(!pid_exists(u32::MAX - 1));
        assert!(process_status(&(u32::MAX - 1).to_string()).is_none());
    }
}
