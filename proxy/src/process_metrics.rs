//! The standard `process_*` metrics every Prometheus client library exports (CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, start time), read from
//! `/proc/self` when scraped. On systems without `/proc` the family is simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/self/stat` times (`USER_HZ`: 100 on every Linux ABI).
const TICKS: f64 = 100.0;

/// Reads `/proc/self` on each scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// One reading.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reading {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<f64>,
    pub(crate) virtual_bytes: Option<f64>,
    pub(crate) open_fds: Option<f64>,
    pub(crate) max_fds: Option<f64>,
    pub(crate) start_time_seconds: Option<f64>,
}

impl Reading {
    pub(crate) fn now() -> Reading {
        let mut r = Reading::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| boot_time(&s));
            parse_stat(&stat, boot, &mut r);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            r.resident_bytes = status_kib(&status, "VmRSS:").map(|k| k * 1024.0);
            r.virtual_bytes = status_kib(&status, "VmSize:").map(|k| k * 1024.0);
        }
        r.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        r.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        r
    }
}

/// CPU time and start time from `/proc/self/stat` (fields after the parenthesised command
/// name, which may itself hold spaces and parentheses).
fn parse_stat(stat: &str, boot_time: Option<f64>, r: &mut Reading) {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15, starttime 22.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(u), Some(s)) = (num(14), num(15)) {
        r.cpu_seconds = Some((u + s) / TICKS);
    }
    if let (Some(start), Some(boot)) = (num(22), boot_time) {
        r.start_time_seconds = Some(boot + start / TICKS);
    }
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `kB` value of `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let r = Reading::now();
        if let Some(v) = r.cpu_seconds {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed_field_by_field() {
        let mut r = Reading::default();
        // A command name with a space and a parenthesis, as the kernel writes it.
        let stat = "4242 (sluice (w) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 0 0";
        parse_stat(stat, Some(1_700_000_000.0), &mut r);
        assert_eq!(r.cpu_seconds, Some(3.0));
        let start = r.start_time_seconds.unwrap();
        assert!((start - 1_700_000_123.45).abs() < 1e-6, "{start}");
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            status_kib(
                "Name:\tsluice\nVmSize:\t  20480 kB\nVmRSS:\t    2048 kB\n",
                "VmRSS:"
            ),
            Some(2048.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_reads_as_alive() {
        let r = Reading::now();
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(r.resident_bytes.is_some_and(|b| b > 0.0), "{r:?}");
        assert!(r.open_fds.is_some_and(|n| n >= 3.0), "{r:?}");
        assert!(r.max_fds.is_some_and(|n| n >= 3.0), "{r:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = r.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} {now}"
        );
    }
}
