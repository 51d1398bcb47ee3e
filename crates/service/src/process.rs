//! The process's own CPU seconds and resident memory, read from `/proc/self/stat` at each
//! scrape, for every command that serves `/metrics`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `process_cpu_seconds_total` and `process_resident_memory_bytes` (Linux; nothing elsewhere).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(usage) = usage() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(usage.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Process CPU seconds, user and system",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(usage.resident_bytes);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Process resident memory",
            None,
            rss.metric_type(),
        )?)?;
        Ok(())
    }
}

/// What the kernel accounts for this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
}

/// This process's usage, from `/proc/self/stat` (`None` where there is no procfs).
pub fn usage() -> Option<Usage> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn parse_stat(stat: &str) -> Option<Usage> {
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) … utime(11) stime(12) … rss(21), in ticks and pages.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss: i64 = fields.get(21)?.parse().ok()?;
    // Linux reports ticks of USER_HZ (100 on every mainstream build) and 4 KiB pages.
    Some(Usage {
        cpu_seconds: (utime + stime) as f64 / 100.0,
        resident_bytes: rss * 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_parses() {
        let line = "4242 (lake shop) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 \
                    9 0 1234 104857600 3000 18446744073709551615";
        let u = parse_stat(line).expect("parsed");
        assert_eq!(u.cpu_seconds, 3.25);
        assert_eq!(u.resident_bytes, 3000 * 4096);
    }

    #[test]
    fn the_collector_reports_this_process() {
        // Burn a little CPU so the counter cannot be zero.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
        assert!(
            value("process_resident_memory_bytes") > 1_000_000.0,
            "{text}"
        );
    }
}
