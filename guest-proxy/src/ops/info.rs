//! `info`: facts about the guest, read from `/etc` and `/proc`. A fact that
//! cannot be read is left out; the request does not fail for it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use daas_guest_proxy_wire::message::{
    DiskInfo, DisplayInfo, Info, InfoResult, LoggedInUser, MemoryInfo, OsInfo,
};
use daas_guest_proxy_wire::PROTOCOL_VERSION;

use crate::accounts::Accounts;
use crate::error::OpError;
use crate::serve::Ctx;

pub(crate) fn info(_ctx: &Ctx, _args: Info) -> Result<InfoResult, OpError> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let accounts = Accounts::load(Path::new("/"));
    Ok(InfoResult {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: PROTOCOL_VERSION,
        os: read("/etc/os-release")
            .or_else(|| read("/usr/lib/os-release"))
            .map(|t| parse_os_release(&t))
            .unwrap_or_default(),
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        uptime_secs: read("/proc/uptime").and_then(|t| t.split_whitespace().next()?.parse().ok()),
        load: read("/proc/loadavg").and_then(|t| parse_loadavg(&t)),
        memory: read("/proc/meminfo").map(|t| parse_meminfo(&t)),
        disks: read("/proc/self/mounts")
            .map(|t| disks(&t))
            .unwrap_or_default(),
        users: ["/run/utmp", "/var/run/utmp"]
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .map(|b| parse_utmp(&b))
            .unwrap_or_default(),
        displays: x_displays(Path::new("/tmp/.X11-unix"), &accounts),
    })
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v);
    v.replace("\\\"", "\"").replace("\\\\", "\\")
}

pub(crate) fn parse_os_release(text: &str) -> OsInfo {
    let mut os = OsInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = Some(unquote(v));
        match k.trim() {
            "ID" => os.id = v,
            "NAME" => os.name = v,
            "VERSION_ID" => os.version_id = v,
            "PRETTY_NAME" => os.pretty_name = v,
            _ => {}
        }
    }
    os
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

pub(crate) fn parse_meminfo(text: &str) -> MemoryInfo {
    let mut m = MemoryInfo::default();
    for line in text.lines() {
        let Some((k, rest)) = line.split_once(':') else {
            continue;
        };
        let kib: u64 = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let bytes = kib.saturating_mul(1024);
        match k {
            "MemTotal" => m.total_bytes = bytes,
            "MemAvailable" => m.available_bytes = bytes,
            "SwapTotal" => m.swap_total_bytes = bytes,
            "SwapFree" => m.swap_free_bytes = bytes,
            _ => {}
        }
    }
    m
}

/// Undoes the octal escapes of `/proc/self/mounts` (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(&[d1, d2, d3]) = b.get(i + 1..i + 4) {
                if (b'0'..=b'3').contains(&d1) && [d2, d3].iter().all(|d| (b'0'..=b'7').contains(d))
                {
                    out.push((d1 - b'0') * 64 + (d2 - b'0') * 8 + (d3 - b'0'));
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystems that hold no user data.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "configfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "ramfs",
    "squashfs",
    "selinuxfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
];

pub(crate) fn parse_mounts(text: &str) -> Vec<(String, String, String)> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            if PSEUDO_FS.contains(&fs) {
                return None;
            }
            let mnt = unescape_mount(mnt);
            seen.insert(mnt.clone())
                .then(|| (unescape_mount(dev), mnt, fs.to_string()))
        })
        .collect()
}

fn disks(mounts: &str) -> Vec<DiskInfo> {
    parse_mounts(mounts)
        .into_iter()
        .filter_map(|(device, mount_point, fs_type)| {
            let st = rustix::fs::statvfs(mount_point.as_str()).ok()?;
            if st.f_blocks == 0 {
                return None;
            }
            Some(DiskInfo {
                total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
                available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
                mount_point,
                device,
                fs_type,
            })
        })
        .collect()
}

/// glibc x86-64 `struct utmp`: 384 bytes.
const UTMP_SIZE: usize = 384;
const USER_PROCESS: i16 = 7;

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(crate) fn parse_utmp(data: &[u8]) -> Vec<LoggedInUser> {
    data.chunks_exact(UTMP_SIZE)
        .filter_map(|r| {
            let kind = i16::from_le_bytes([r[0], r[1]]);
            if kind != USER_PROCESS {
                return None;
            }
            let pid = i32::from_le_bytes([r[4], r[5], r[6], r[7]]);
            let since = i32::from_le_bytes([r[340], r[341], r[342], r[343]]);
            Some(LoggedInUser {
                line: cstr(&r[8..40]),
                user: cstr(&r[44..76]),
                host: cstr(&r[76..332]),
                pid,
                since: i64::from(since),
            })
        })
        .collect()
}

pub(crate) fn x_displays(dir: &Path, accounts: &Accounts) -> Vec<DisplayInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, DisplayInfo)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix('X')?.parse().ok()?;
            let meta = e.metadata().ok()?;
            Some((
                n,
                DisplayInfo {
                    display: format!(":{n}"),
                    uid: meta.uid(),
                    user: accounts.user_by_uid(meta.uid()).map(|u| u.name.clone()),
                },
            ))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian GNU/Linux'\nVERSION_ID=\"12\"\nID=debian\n# c\nnoise\n",
        );
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn proc_files() {
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 1/100 42\n"),
            Some([0.5, 0.25, 0.1])
        );
        assert_eq!(parse_loadavg("x"), None);
        let m = parse_meminfo(
            "MemTotal:  2048 kB\nMemFree: 1 kB\nMemAvailable: 1024 kB\nSwapTotal: 0 kB\n",
        );
        assert_eq!(m.total_bytes, 2 << 20);
        assert_eq!(m.available_bytes, 1 << 20);
        let mounts = parse_mounts(
            "/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/vdb /mnt/my\\040disk xfs rw 0 0\n/dev/vda1 / ext4 rw 0 0\n",
        );
        assert_eq!(
            mounts,
            vec![
                ("/dev/vda1".into(), "/".into(), "ext4".into()),
                ("/dev/vdb".into(), "/mnt/my disk".into(), "xfs".into())
            ]
        );
        assert_eq!(unescape_mount("a\\"), "a\\");
        assert_eq!(unescape_mount("a\\04"), "a\\04");
        assert_eq!(unescape_mount("\\134x"), "\\x");
    }

    #[test]
    fn utmp_records() {
        let mut rec = vec![0u8; UTMP_SIZE];
        rec[0..2].copy_from_slice(&USER_PROCESS.to_le_bytes());
        rec[4..8].copy_from_slice(&1234i32.to_le_bytes());
        rec[8..13].copy_from_slice(b"pts/0");
        rec[44..49].copy_from_slice(b"alice");
        rec[76..85].copy_from_slice(b"10.0.0.1\0");
        rec[340..344].copy_from_slice(&1_700_000_000i32.to_le_bytes());
        let mut boot = vec![0u8; UTMP_SIZE];
        boot[0] = 2;
        let mut data = boot;
        data.extend_from_slice(&rec);
        data.extend_from_slice(&[1, 2, 3]); // torn tail
        let users = parse_utmp(&data);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].user, "alice");
        assert_eq!(users[0].line, "pts/0");
        assert_eq!(users[0].host, "10.0.0.1");
        assert_eq!(users[0].pid, 1234);
        assert_eq!(users[0].since, 1_700_000_000);
    }
}
