//! Process-level limits a node sets for itself at start.

mod common;

use std::os::unix::process::CommandExt;

use common::NodeProcess;

/// The soft and hard "Max open files" of a running process, from /proc.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn a_node_started_with_a_low_soft_limit_on_open_files_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = NodeProcess::command(1, "127.0.0.1", dir.path(), &[]);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // getrlimit/setrlimit, which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = 256;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let node = NodeProcess::spawn_command(command, 1, "127.0.0.1", dir.path(), &[]);
    let (soft, hard) = open_files_limit(node.child.id());
    drop(node);
    // As far as the hard limit allows, up to the 8,192 a node wants.
    assert_eq!(soft, hard.min(8192), "soft {soft}, hard {hard}");
}
