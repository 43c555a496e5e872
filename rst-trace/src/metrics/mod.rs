//! Prometheus metrics: `rst-trace run --metrics-addr [HOST:]PORT` serves `/metrics`.
//!
//! Totals are read when a scrape asks for them, never on a timer: reading the kernel's per-CPU
//! counters costs one syscall per entry, and an agent nobody scrapes stays idle. The scrape asks
//! the run loop over a channel; the loop answers with the same totals its `rst_trace.stats` line
//! carries (see [`crate::embed::Snapshot`]), so the two always reconcile.
//!
//! Encoded with the `prometheus-client` crate: OpenMetrics 1.0 for a scraper that asks for it
//! (Prometheus does), the Prometheus text format 0.0.4 otherwise (curl, `promtool check
//! metrics`, which cannot parse OpenMetrics counters).
pub mod http;
pub mod listeners;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    cause::Cause,
    embed::{Embedding, Snapshot},
};
use listeners::{ListenerSeries, SharedTally};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Scrapes waiting for the run loop at most; more wait for room (bounded by their timeout).
const PENDING_SCRAPES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("encoding metrics")]
    Encode(#[from] fmt::Error),
}

/// The exposition format of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it with a non-zero q, as Prometheus sends
    /// it; the classic text format otherwise (what client_golang does too).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::PrometheusText;
        };
        let wants = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        });
        if wants {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// `--metrics-addr`: `PORT` (binds 127.0.0.1), `HOST:PORT`, `[V6]:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        // Metrics name processes and ports: not for the whole network unless asked.
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s} resolves to no address")),
        Err(e) => Err(format!("expected PORT or HOST:PORT, got {s:?}: {e}")),
    }
}

/// Binds the endpoint and starts serving it; the returned embedding connects it to the run
/// loop. Called inside the agent's runtime.
pub async fn start(addr: SocketAddr, top_n: usize) -> Result<Embedding, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!("rst-trace: metrics at http://{local}/metrics");
    let (tx, rx) = mpsc::channel(PENDING_SCRAPES);
    let tally = SharedTally::new(top_n);
    tokio::spawn(http::serve(listener, tx, tally.clone()));
    Ok(Embedding {
        taps: vec![Box::new(tally)],
        snapshots: Some(rx),
        ..Embedding::default()
    })
}

/// One scrape's worth of figures, encoded by `prometheus-client`.
#[derive(Debug)]
struct Scrape {
    snap: Snapshot,
    listeners: Vec<ListenerSeries>,
}

pub fn encode(
    snap: Snapshot,
    listeners: Vec<ListenerSeries>,
    format: Format,
) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { snap, listeners }));
    let mut out = String::with_capacity(8192);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
    }
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Occupancy of every bounded table, and what did not fit (refused or evicted).
fn table_metrics(
    enc: &mut DescriptorEncoder,
    tables: &[crate::occupancy::TableFigure],
) -> fmt::Result {
    let label = |t: &crate::occupancy::TableFigure| vec![("table", t.name.to_owned())];
    gauges(
        enc,
        "rst_trace_table_entries",
        "Entries in each of the agent's bounded tables (kernel maps RST_*, userspace caches).",
        tables.iter().map(|t| (label(t), to_i64(t.entries))),
    )?;
    gauges(
        enc,
        "rst_trace_table_capacity",
        "Entries each bounded table can hold.",
        tables.iter().map(|t| (label(t), to_i64(t.capacity))),
    )?;
    counters(
        enc,
        "rst_trace_table_refused",
        "Inserts a full table turned away.",
        tables
            .iter()
            .filter_map(|t| t.refused.map(|r| (label(t), r))),
    )?;
    counters(
        enc,
        "rst_trace_table_evicted",
        "Entries a table forgot to make room (LRU maps; namespaces that went away).",
        tables
            .iter()
            .filter_map(|t| t.evicted.map(|r| (label(t), r))),
    )
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_causes(&mut enc)?;
        self.encode_records(&mut enc)?;
        self.encode_owner_tables(&mut enc)?;
        let s = &self.snap;
        table_metrics(&mut enc, &s.tables)?;
        let m = enc.encode_descriptor(
            "rst_trace_build",
            "The agent's version and the kernel it runs on.",
            None,
            MetricType::Info,
        )?;
        Info::new(vec![
            ("version", s.info.version.to_owned()),
            ("kernel", s.info.kernel.clone()),
        ])
        .encode(m)
    }
}

impl Scrape {
    /// Per-cause totals, listener events and RSTs sent.
    fn encode_causes(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snap;
        // Every cause, zero included: an alert on increase() works from the first event.
        counters(
            enc,
            "rst_trace_causes",
            "TCP resets and drops per cause; the per-cause totals of the rst_trace.stats line (kernel counters where they decide the cause).",
            Cause::ALL.iter().map(|c| {
                (
                    vec![("cause", c.as_str().to_owned())],
                    s.causes.get(c).copied().unwrap_or(0),
                )
            }),
        )?;
        counters(
            enc,
            "rst_trace_listener_events",
            "Listener-side events per cause, listening port and owning process: the top N pairs per cause by count, the rest under port=\"other\", process=\"other\".",
            self.listeners.iter().map(|l| {
                (
                    vec![
                        ("cause", l.cause.as_str().to_owned()),
                        ("port", l.port.clone()),
                        ("process", l.process.clone()),
                    ],
                    l.value,
                )
            }),
        )?;
        counters(
            enc,
            "rst_trace_resets_sent",
            "RSTs this host sent, by origin: tcp_stack reconciles with the kernel's Tcp.OutRsts, netfilter is what REJECT rules sent (TCP does not count those).",
            [
                (vec![("origin", "tcp_stack".to_owned())], s.resets_sent_tcp_stack),
                (vec![("origin", "netfilter".to_owned())], s.resets_sent_netfilter),
            ],
        )?;
        Ok(())
    }

    /// The agent's own record counts and which hooks are attached.
    fn encode_records(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snap;
        counter(
            enc,
            "rst_trace_records_delivered",
            "Records read from the kernel's ring buffer.",
            s.delivered,
        )?;
        counter(
            enc,
            "rst_trace_records_lost",
            "Records the ring buffer could not take (the per-cause totals still count them where kernel counters decide the cause).",
            s.lost,
        )?;
        counters(
            enc,
            "rst_trace_program_skipped_runs",
            "Runs of a kernel program the kernel skipped because the program was already running on that CPU when an interrupt brought another event (bpf_prog_info recursion_misses, 5.12 and later): their events are missing.",
            s.skipped_runs
                .iter()
                .map(|(p, n)| (vec![("program", p.clone())], *n)),
        )?;
        counter(
            enc,
            "rst_trace_records_undecodable",
            "Records that could not be decoded.",
            s.undecodable,
        )?;
        counter(
            enc,
            "rst_trace_events_folded",
            "Events folded into per-second storm summaries instead of being written one by one.",
            s.folded,
        )?;
        gauges(
            enc,
            "rst_trace_hook_attached",
            "1 when the kernel hook is attached, 0 when it is not (rst-trace doctor says why).",
            s.info
                .hooks
                .iter()
                .map(|(h, on)| (vec![("hook", (*h).to_owned())], i64::from(*on))),
        )?;
        Ok(())
    }

    /// The kernel's socket ownership tables.
    fn encode_owner_tables(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snap;
        let o = &s.owners;
        gauges(
            enc,
            "rst_trace_owner_table_capacity",
            "Entries the kernel's socket ownership tables can hold.",
            [
                (vec![("table", "sockets".to_owned())], to_i64(o.capacity)),
                (
                    vec![("table", "timewait".to_owned())],
                    to_i64(o.timewait_capacity),
                ),
            ],
        )?;
        counters(
            enc,
            "rst_trace_owner_table_stored",
            "Owners stored in the kernel's ownership tables.",
            [
                (vec![("table", "sockets".to_owned())], o.stored),
                (vec![("table", "timewait".to_owned())], o.timewait_stored),
            ],
        )?;
        counters(
            enc,
            "rst_trace_owner_table_full",
            "Owners that did not fit in the kernel's ownership table.",
            [(vec![("table", "sockets".to_owned())], o.full)],
        )?;
        counters(
            enc,
            "rst_trace_owner_lookups",
            "Events that looked up their socket's owner in the kernel's tables, by result.",
            [
                (vec![("result", "found".to_owned())], o.lookups_found),
                (
                    vec![("result", "not_found".to_owned())],
                    o.lookups_not_found,
                ),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::{embed::AgentInfo, stats::OwnerTables};

    fn snap() -> Snapshot {
        Snapshot {
            causes: BTreeMap::from([(Cause::NoListener, 5), (Cause::ConnectionRefused, 5)]),
            delivered: 12,
            lost: 1,
            undecodable: 0,
            folded: 3,
            resets_sent_tcp_stack: 5,
            resets_sent_netfilter: 0,
            owners: OwnerTables {
                capacity: 131_072,
                stored: 7,
                full: 0,
                timewait_capacity: 65_536,
                timewait_stored: 2,
                timewait_evicted: 0,
                lookups_found: 4,
                lookups_not_found: 1,
            },
            tables: vec![crate::occupancy::TableFigure {
                name: "RST_TW_OWNERS",
                entries: 3,
                capacity: 65_536,
                refused: None,
                evicted: Some(2),
            }],
            skipped_runs: BTreeMap::from([
                ("kfree_skb".to_owned(), 2),
                ("tcp_send_reset".to_owned(), 0),
            ]),
            info: Arc::new(AgentInfo {
                version: "0.1.0",
                kernel: "6.18.0".into(),
                hooks: vec![("tcp_send_reset", true), ("tcp_conn_request", false)],
            }),
        }
    }

    fn listeners() -> Vec<ListenerSeries> {
        vec![ListenerSeries {
            cause: Cause::NoListener,
            port: "8080".into(),
            process: "none".into(),
            value: 5,
        }]
    }

    #[test]
    fn openmetrics_exposition() {
        let t = encode(snap(), listeners(), Format::OpenMetrics).expect("encode");
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert!(t.contains("# TYPE rst_trace_causes counter\n"), "{t}");
        assert!(
            t.contains("rst_trace_causes_total{cause=\"no_listener\"} 5\n"),
            "{t}"
        );
        assert!(
            t.contains("rst_trace_causes_total{cause=\"fd_exhaustion\"} 0\n"),
            "{t}"
        );
        assert!(t.contains(
            "rst_trace_listener_events_total{cause=\"no_listener\",port=\"8080\",process=\"none\"} 5\n"
        ));
        assert!(t.contains("rst_trace_records_lost_total 1\n"), "{t}");
        assert!(t.contains("rst_trace_events_folded_total 3\n"), "{t}");
        assert!(
            t.contains("rst_trace_program_skipped_runs_total{program=\"kfree_skb\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("rst_trace_resets_sent_total{origin=\"tcp_stack\"} 5\n"),
            "{t}"
        );
        assert!(
            t.contains("rst_trace_hook_attached{hook=\"tcp_conn_request\"} 0\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE rst_trace_build info\n"), "{t}");
        assert!(t.contains("rst_trace_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1\n"));
        assert!(t.contains("rst_trace_owner_lookups_total{result=\"not_found\"} 1\n"));
        assert!(t.contains("rst_trace_owner_table_capacity{table=\"timewait\"} 65536\n"));
    }

    #[test]
    fn prometheus_text_exposition() {
        let t = encode(snap(), listeners(), Format::PrometheusText).expect("encode");
        assert!(!t.contains("# EOF"), "{t}");
        assert!(t.contains("# TYPE rst_trace_causes_total counter\n"), "{t}");
        assert!(t.contains("# TYPE rst_trace_build_info gauge\n"), "{t}");
        assert!(t.contains("rst_trace_records_delivered_total 12\n"), "{t}");
    }

    #[test]
    fn content_negotiation_follows_accept() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::PrometheusText
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; q=0")),
            Format::PrometheusText
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("9464"),
            Ok("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("0.0.0.0:9464"),
            Ok("0.0.0.0:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("[::1]:9464"),
            Ok("[::1]:9464".parse().expect("addr"))
        );
        assert!(parse_addr("localhost:9464").is_ok());
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr("70000").is_err());
    }
}
