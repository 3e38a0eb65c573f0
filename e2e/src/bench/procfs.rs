//! What `/proc` says about a process: resident memory (`VmRSS`) and its high-water mark
//! (`VmHWM`, kept by the kernel, so no peak is missed between samples), CPU time, open
//! file descriptors and TCP connections by remote port; and about the machine: CPUs,
//! memory, load average. Parsing is pure and tested; reading returns `None` when the
//! process is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::OnceLock;

/// Memory of a process, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set now.
    pub rss_kib: u64,
    /// Highest resident set since the process started.
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The memory of process `pid`.
pub fn memory(pid: u32) -> Option<Memory> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// User plus system CPU time, in clock ticks, of `/proc/<pid>/stat` text (fields 14 and
/// 15, counted after the command name, which may hold spaces and parentheses).
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds process `pid` has used (every thread, user and system).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = parse_stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(ticks as f64 / clock_ticks() as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be asked).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The process group (field 5) of `/proc/<pid>/stat` text.
pub fn parse_stat_group(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}

/// CPU seconds used so far by the live processes of process group `group` (a
/// component and the workers it forked, like nginx's).
pub fn group_cpu_seconds(group: u32) -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let ticks: u64 = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| parse_stat_group(stat) == Some(group))
        .filter_map(|stat| parse_stat_ticks(&stat))
        .sum();
    ticks as f64 / clock_ticks() as f64
}

/// The first process whose command line contains `needle` (arguments joined by spaces).
pub fn find_process(needle: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.contains(needle).then_some(pid)
    })
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// One row of `/proc/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    /// Local port.
    pub local_port: u16,
    /// Remote port.
    pub remote_port: u16,
    /// Connection state (1: established).
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
}

/// The rows of `/proc/net/tcp` (or `tcp6`) text.
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
            Some(TcpRow {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The socket inodes among the targets of `/proc/<pid>/fd/*` links (`socket:[123]`).
fn socket_inodes(pid: u32) -> Option<BTreeSet<u64>> {
    let mut inodes = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Some(inodes)
}

/// Established TCP connections of process `pid`, counted by remote port.
pub fn connections_by_remote_port(pid: u32) -> Option<BTreeMap<u16, usize>> {
    let inodes = socket_inodes(pid)?;
    let mut out = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in parse_tcp_table(&text) {
            if row.state == 1 && inodes.contains(&row.inode) {
                *out.entry(row.remote_port).or_insert(0) += 1;
            }
        }
    }
    Some(out)
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPUs online.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Memory of the machine, MiB (`MemTotal`).
pub fn memory_total_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_rss_and_high_water_mark() {
        let text =
            "Name:\tscale-agent\nVmPeak:\t  900 kB\nVmHWM:\t  51200 kB\nVmRSS:\t  40960 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kib: 40960,
                hwm_kib: 51200
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn stat_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let text =
            "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat_ticks(text), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_group(text), Some(4242));
    }

    #[test]
    fn tcp_rows_give_ports_state_and_inode() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1\n   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_tcp_table(text);
        assert_eq!(
            rows,
            vec![
                TcpRow {
                    local_port: 0xA1B2,
                    remote_port: 8080,
                    state: 1,
                    inode: 123456
                },
                TcpRow {
                    local_port: 8080,
                    remote_port: 0,
                    state: 10,
                    inode: 777
                },
            ]
        );
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        let m = memory(me).expect("own status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_seconds(me).is_some());
        assert!(open_fds(me).is_some_and(|n| n > 0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let by_port = connections_by_remote_port(me).expect("own sockets");
        assert_eq!(by_port.get(&port), Some(&1), "{by_port:?}");
        let group =
            parse_stat_group(&fs::read_to_string("/proc/self/stat").expect("stat")).expect("group");
        assert!(group_cpu_seconds(group) > 0.0);
        let needle = std::env::args().next().expect("argv0");
        assert!(find_process(&needle).is_some());
    }
}
