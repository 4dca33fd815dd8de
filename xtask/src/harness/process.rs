//! Child processes in their own process group, killed (with their children) on drop, and the
//! runtimes that serve a component or Worker on a loopback port (`LocalServer`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{edge_answered, try_request, wait_for};

/// A child process in its own process group, killed (with its children) on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    killed: bool,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self {
            child,
            log,
            killed: false,
        }
    }

    /// CPU time (user + system, ms) of the processes in this child's process group, or only of
    /// those whose command is `comm` (e.g. `workerd` under `wrangler dev`, not its Node proxy):
    /// read from /proc, Linux only; 0 where unreadable.
    pub fn group_cpu_ms(&self, comm: Option<&str>) -> f64 {
        let group = self.child.id().to_string();
        let ticks_per_s = 100.0; // USER_HZ, 100 on Linux
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ... utime(14) stime(15); comm may hold spaces.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let name = head.split_once(" (").map(|(_, n)| n).unwrap_or("");
            let fields: Vec<&str> = rest.split(' ').collect();
            if comm.is_none_or(|c| c == name) && fields.get(2) == Some(&group.as_str()) {
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                ticks += field(11) + field(12);
            }
        }
        ticks as f64 * 1000.0 / ticks_per_s
    }

    /// Resident memory (KiB) of the process group's processes now (`VmRSS`).
    pub fn group_rss_kib(&self) -> u64 {
        let group = self.child.id().to_string();
        let mut kib = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let in_group = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.split(' ').nth(2) == Some(group.as_str()));
            if !in_group {
                continue;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            kib += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        kib
    }

    /// SIGKILL to the whole group: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A runtime serving on a loopback port picked at run time, started and waited for until its
/// `/healthz` answers 200.
pub struct LocalServer {
    pub port: u16,
    proc: Proc,
    /// Time from spawning the process to its first 200.
    pub startup: Duration,
}

impl LocalServer {
    pub(super) fn serve(cmd: Command, log: PathBuf, port: u16, what: &str) -> Self {
        let started = Instant::now();
        let proc = Proc::spawn(cmd, log);
        let health = format!("http://127.0.0.1:{port}/healthz");
        wait_for(Duration::from_secs(60), what, || {
            try_request("GET", &health, None, None)
                .ok()
                .filter(edge_answered)
        });
        Self {
            port,
            proc,
            startup: started.elapsed(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// CPU time (ms) the runtime's processes have used so far; see `Proc::group_cpu_ms`.
    pub fn cpu_ms(&self) -> f64 {
        self.proc.group_cpu_ms(None)
    }

    /// Resident memory (KiB) of the runtime's processes now.
    pub fn rss_kib(&self) -> u64 {
        self.proc.group_rss_kib()
    }
}
