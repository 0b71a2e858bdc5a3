//! Counters of all tunnels, for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use daas_vnc_engine::EngineStats;

/// The gateway's counters, shared by all tunnels (one `Arc<Metrics>` per
/// appliance). Tunnels add to them once per WebSocket message, not per
/// instruction, so contention stays low.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Tunnels open now (a gauge).
    pub open_tunnels: AtomicU64,
    /// Tunnels opened since start.
    pub tunnels_total: AtomicU64,
    /// Tunnels that ended with an error status.
    pub tunnel_failures_total: AtomicU64,
    /// Bytes of instructions sent to browsers.
    pub bytes_to_client: AtomicU64,
    /// Bytes of instructions received from browsers.
    pub bytes_from_client: AtomicU64,
    /// WebSocket messages sent to browsers.
    pub messages_to_client: AtomicU64,
    /// WebSocket messages received from browsers.
    pub messages_from_client: AtomicU64,
    /// Instructions relayed to browsers (the guacd engine).
    pub instructions_to_client: AtomicU64,
    /// Instructions received from browsers, internal ones included.
    pub instructions_from_client: AtomicU64,
    /// Frames (`sync` instructions) sent to browsers.
    pub frames: AtomicU64,
    /// Browser round trips measured: a `sync` sent and its acknowledgement.
    pub sync_round_trips: AtomicU64,
    /// Their total time, in microseconds.
    pub sync_round_trip_micros: AtomicU64,
    /// Internal pings answered by the tunnel.
    pub pings_answered: AtomicU64,
    /// The built-in engine: time composing and encoding frames, in µs.
    pub engine_encode_micros: AtomicU64,
    /// The built-in engine: PNG images sent.
    pub engine_png_images: AtomicU64,
    /// The built-in engine: JPEG images sent.
    pub engine_jpeg_images: AtomicU64,
    /// The built-in engine: `copy` instructions sent.
    pub engine_copies: AtomicU64,
    /// The built-in engine: solid fills sent.
    pub engine_fills: AtomicU64,
    /// The built-in engine: bytes received from VNC servers.
    pub engine_server_bytes: AtomicU64,
    /// The built-in engine: framebuffer updates received from VNC servers.
    pub engine_server_updates: AtomicU64,
}

impl Metrics {
    /// A fresh set of counters.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Every metric as (name, help, value), in Prometheus naming: names that
    /// end in `_total` are counters, the others gauges.
    pub fn prometheus(&self) -> Vec<(&'static str, &'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Relaxed);
        vec![
            (
                "daas_gateway_open_tunnels",
                "Tunnels open now.",
                get(&self.open_tunnels),
            ),
            (
                "daas_gateway_tunnels_total",
                "Tunnels opened.",
                get(&self.tunnels_total),
            ),
            (
                "daas_gateway_tunnel_failures_total",
                "Tunnels that ended with an error status.",
                get(&self.tunnel_failures_total),
            ),
            (
                "daas_gateway_sent_bytes_total",
                "Bytes of Guacamole instructions sent to browsers.",
                get(&self.bytes_to_client),
            ),
            (
                "daas_gateway_received_bytes_total",
                "Bytes of Guacamole instructions received from browsers.",
                get(&self.bytes_from_client),
            ),
            (
                "daas_gateway_sent_messages_total",
                "WebSocket messages sent to browsers.",
                get(&self.messages_to_client),
            ),
            (
                "daas_gateway_received_messages_total",
                "WebSocket messages received from browsers.",
                get(&self.messages_from_client),
            ),
            (
                "daas_gateway_relayed_instructions_total",
                "Instructions relayed from guacd to browsers.",
                get(&self.instructions_to_client),
            ),
            (
                "daas_gateway_received_instructions_total",
                "Instructions received from browsers.",
                get(&self.instructions_from_client),
            ),
            (
                "daas_gateway_frames_total",
                "Frames (sync instructions) sent to browsers.",
                get(&self.frames),
            ),
            (
                "daas_gateway_sync_round_trips_total",
                "Browser round trips measured from sync acknowledgements.",
                get(&self.sync_round_trips),
            ),
            (
                "daas_gateway_sync_round_trip_microseconds_total",
                "Total time of those round trips, in microseconds.",
                get(&self.sync_round_trip_micros),
            ),
            (
                "daas_gateway_pings_answered_total",
                "Internal pings the tunnel answered.",
                get(&self.pings_answered),
            ),
            (
                "daas_gateway_engine_encode_microseconds_total",
                "Built-in VNC engine: time composing and encoding frames, in microseconds.",
                get(&self.engine_encode_micros),
            ),
            (
                "daas_gateway_engine_png_images_total",
                "Built-in VNC engine: PNG images sent.",
                get(&self.engine_png_images),
            ),
            (
                "daas_gateway_engine_jpeg_images_total",
                "Built-in VNC engine: JPEG images sent.",
                get(&self.engine_jpeg_images),
            ),
            (
                "daas_gateway_engine_copies_total",
                "Built-in VNC engine: copy instructions sent (CopyRect, scrolling).",
                get(&self.engine_copies),
            ),
            (
                "daas_gateway_engine_fills_total",
                "Built-in VNC engine: solid fills sent.",
                get(&self.engine_fills),
            ),
            (
                "daas_gateway_engine_server_bytes_total",
                "Built-in VNC engine: bytes received from VNC servers.",
                get(&self.engine_server_bytes),
            ),
            (
                "daas_gateway_engine_server_updates_total",
                "Built-in VNC engine: framebuffer updates received from VNC servers.",
                get(&self.engine_server_updates),
            ),
        ]
    }

    /// [`Metrics::prometheus`] in the Prometheus text format, with `# HELP`
    /// and `# TYPE` lines.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.prometheus() {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

/// Carries one engine session's counters into the gateway's totals: each
/// [`EngineTap::publish`] adds what changed since the last one.
pub(crate) struct EngineTap {
    stats: Arc<EngineStats>,
    seen: [u64; 9],
    last_rtt: u64,
}

impl EngineTap {
    pub(crate) fn new(stats: Arc<EngineStats>) -> Self {
        EngineTap {
            stats,
            seen: [0; 9],
            last_rtt: 0,
        }
    }

    pub(crate) fn publish(&mut self, m: &Metrics) {
        let s = &*self.stats;
        let pairs: [(&AtomicU64, &AtomicU64); 9] = [
            (&s.frames, &m.frames),
            (&s.server_updates, &m.engine_server_updates),
            (&s.instructions_out, &m.instructions_to_client),
            (&s.encode_micros, &m.engine_encode_micros),
            (&s.png_count, &m.engine_png_images),
            (&s.jpeg_count, &m.engine_jpeg_images),
            (&s.copy_count, &m.engine_copies),
            (&s.fill_count, &m.engine_fills),
            (&s.bytes_in, &m.engine_server_bytes),
        ];
        for (i, (from, to)) in pairs.into_iter().enumerate() {
            let now = from.load(Relaxed);
            Metrics::add(to, now.saturating_sub(self.seen[i]));
            self.seen[i] = now;
        }
        // A new acknowledged frame shows as a changed round trip time.
        let rtt = s.last_rtt_micros.load(Relaxed);
        if rtt != 0 && rtt != self.last_rtt {
            Metrics::add(&m.sync_round_trips, 1);
            Metrics::add(&m.sync_round_trip_micros, rtt);
        }
        self.last_rtt = rtt;
    }
}

/// Keeps [`Metrics::open_tunnels`] true while a tunnel runs.
pub(crate) struct OpenGuard<'a>(&'a Metrics);

impl<'a> OpenGuard<'a> {
    pub(crate) fn new(metrics: &'a Metrics) -> Self {
        metrics.open_tunnels.fetch_add(1, Relaxed);
        metrics.tunnels_total.fetch_add(1, Relaxed);
        OpenGuard(metrics)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let m = Metrics::new();
        {
            let _g = OpenGuard::new(&m);
            Metrics::add(&m.frames, 3);
            assert_eq!(m.open_tunnels.load(Relaxed), 1);
        }
        let text = m.prometheus_text();
        assert!(
            text.contains("# TYPE daas_gateway_open_tunnels gauge\ndaas_gateway_open_tunnels 0\n")
        );
        assert!(text
            .contains("# TYPE daas_gateway_frames_total counter\ndaas_gateway_frames_total 3\n"));
        assert!(text.contains("daas_gateway_tunnels_total 1\n"));
        let names: Vec<_> = m.prometheus().iter().map(|r| r.0).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
    }
}
