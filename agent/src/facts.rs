//! Node facts from `/proc` and `statvfs`. The parsers are pure and tested
//! from data; [`gather`] reads the files.

use std::path::{Path, PathBuf};

use daas_agent_api::facts::{
    CpuFacts, DiskFacts, InstanceFacts, InstanceSource, LoadAverage, MemoryFacts, Versions,
};
use daas_agent_api::{NodeFacts, API_VERSION};

/// What [`gather`] needs besides `/proc`.
#[derive(Debug, Clone)]
pub struct FactsInput {
    pub storage_paths: Vec<PathBuf>,
    /// Leases held (one per instance).
    pub leases: u32,
    /// What the appliance last reported, if it did.
    pub appliance_instances: Option<u32>,
    pub dnsmasq_version: Option<String>,
}

/// Measures the node. Blocking (statvfs may wait on a slow mount): call
/// it from `spawn_blocking`.
pub fn gather(input: &FactsInput) -> NodeFacts {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (count, model) = parse_cpuinfo(&read("/proc/cpuinfo"));
    let count = if count == 0 {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    } else {
        count
    };
    let (total, available) = parse_meminfo(&read("/proc/meminfo"));
    let load = parse_loadavg(&read("/proc/loadavg")).unwrap_or(LoadAverage {
        one: 0.0,
        five: 0.0,
        fifteen: 0.0,
    });
    let uptime_secs = parse_uptime(&read("/proc/uptime")).unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let instances = match input.appliance_instances {
        Some(n) => InstanceFacts {
            running: n,
            source: InstanceSource::Appliance,
        },
        None => InstanceFacts {
            running: input.leases,
            source: InstanceSource::Leases,
        },
    };
    NodeFacts {
        hostname,
        cpu: CpuFacts { count, model },
        memory: MemoryFacts {
            total_bytes: total,
            available_bytes: available,
        },
        disks: input.storage_paths.iter().map(|p| disk(p)).collect(),
        load,
        uptime_secs,
        instances,
        versions: Versions {
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            api: API_VERSION,
            kernel,
            dnsmasq: input.dnsmasq_version.clone(),
        },
    }
}

fn disk(path: &Path) -> DiskFacts {
    let name = path.display().to_string();
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            DiskFacts {
                path: name,
                total_bytes: s.blocks().saturating_mul(frag),
                free_bytes: s.blocks_free().saturating_mul(frag),
                available_bytes: s.blocks_available().saturating_mul(frag),
                error: None,
            }
        }
        Err(e) => DiskFacts {
            path: name,
            total_bytes: 0,
            free_bytes: 0,
            available_bytes: 0,
            error: Some(e.desc().to_owned()),
        },
    }
}

/// (logical CPUs, model of the first) from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> (u32, String) {
    let mut count = 0u32;
    let mut model = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" | "Model" | "cpu model" if model.is_empty() => {
                model = v.trim().chars().take(200).collect();
            }
            _ => {}
        }
    }
    (count, model)
}

/// (MemTotal, MemAvailable) in bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let mut total = 0;
    let mut available = None;
    let mut free = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let unit = match it.next() {
            Some("kB") => 1024,
            _ => 1,
        };
        let Ok(n) = v.parse::<u64>() else { continue };
        let bytes = n.saturating_mul(unit);
        match k {
            "MemTotal:" => total = bytes,
            "MemAvailable:" => available = Some(bytes),
            "MemFree:" => free = bytes,
            _ => {}
        }
    }
    (total, available.unwrap_or(free))
}

/// The three load averages from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some(LoadAverage {
        one: it.next()??,
        five: it.next()??,
        fifteen: it.next()??,
    })
}

/// Whole seconds of uptime from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let secs = first.split('.').next()?;
    secs.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_from_data() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            parse_cpuinfo(cpuinfo),
            (2, "Intel(R) Xeon(R) CPU @ 2.20GHz".into())
        );
        assert_eq!(parse_cpuinfo(""), (0, String::new()));
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            (24_576_000 * 1024, 12_288_000 * 1024)
        );
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n"),
            (2048 * 1024, 1024 * 1024)
        );
        assert_eq!(parse_meminfo("garbage\nMemTotal: x kB"), (0, 0));
        let l = parse_loadavg("0.52 0.58 0.59 1/467 12345\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.52, 0.58, 0.59));
        assert!(parse_loadavg("0.5 x").is_none());
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn gathers_this_machine() {
        let f = gather(&FactsInput {
            storage_paths: vec!["/".into(), "/nonexistent-daas".into()],
            leases: 3,
            appliance_instances: None,
            dnsmasq_version: Some("2.90".into()),
        });
        assert!(f.cpu.count >= 1);
        assert!(f.memory.total_bytes > 0);
        assert!(f.disks[0].total_bytes > 0);
        assert!(f.disks[1].error.is_some());
        assert_eq!(f.instances.running, 3);
        assert!(!f.versions.kernel.is_empty());
    }
}
