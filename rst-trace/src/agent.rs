//! `rst-trace run`: load, attach, then turn ring buffer records into diagnoses until told
//! to stop. Shutdown drains the ring buffer and prints exact totals.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use rst_trace_common::{
    event,
    fold::{FOLDS_MAP, FOLD_BUDGET_MAP},
    names::program,
    AcceptorKey, OwnerInfo, WatchedDrop, ACCEPTORS_MAP, COUNTERS_LEN, COUNTERS_MAP, EVENTS_MAP,
    STATE_TASK_VALID,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cause::Cause,
    cli::RunArgs,
    clock::{monotonic_ns, WallClock},
    diagnosis::rfc3339_nanos,
    doctor,
    embed::{AgentInfo, Embedding, Snapshot},
    host::{kernel_hz, HostInfo, ProcHost},
    kernel::{
        btf::KernelBtf,
        layout::{KernelFacts, WATCHED_DROP_REASONS},
        tracefs::Tracefs,
    },
    loader,
    netns::Netns,
    output::Output,
    owner::{Learned, Owner},
    pipeline::Pipeline,
    poller::{self, Poller},
    preflight, procowners,
    records::{DecodeError, Endpoint, Record, Task},
    sensor::{folds::KernelFolds, Sensor},
    skipped_runs::{self, SkippedRuns},
    sockdiag::{self, NetnsSnapshot},
    stats::{exact_cause_counts, kernel_counts, merged_causes, AgentCounts, KernelCounters},
    storm::Limiter,
};

const SATURATION_REPEAT: Duration = Duration::from_secs(10);
/// How often the ring buffer is read when the kernel has not woken the agent.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often the kernel's count of skipped program runs is read, to warn when it grows
/// between stats lines (one file read per program).
const SKIPPED_RUNS_EVERY: Duration = Duration::from_secs(10);
/// Sockets that predate the agent whose owners are remembered at most.
const MAX_SEEDED_SOCKETS: usize = 1 << 20;
/// Listener inodes already looked up in /proc, and saturation warnings, remembered at most:
/// under namespace churn every new listener is a new inode.
const MAX_SCANNED_INODES: usize = 65_536;
const MAX_WARNED: usize = 16_384;

struct Agent {
    pipeline: Pipeline<ProcHost>,
    out: Output,
    limiter: Limiter,
    counts: AgentCounts,
    counters: PerCpuArray<MapData, u64>,
    facts: KernelFacts,
    poller: Poller,
    /// Listeners already looked up in /proc (their inode), so a poll does not walk /proc again.
    scanned_inodes: HashSet<u64>,
    warned: HashMap<(u32, u64), Instant>,
    /// What `top` and the metrics endpoint add to the loop (see `run_with`).
    ext: Embedding,
    /// How full the kernel's maps are.
    kernel_tables: crate::occupancy::KernelTables,
    /// Why /proc hides processes from the agent, if it does (see
    /// [`procowners::hidden_processes`]): said in every event whose owner is unknown.
    proc_hidden: Option<String>,
    skipped: SkippedRuns,
    /// The total of skipped runs last warned about.
    skipped_warned_at: u64,
    /// Storm folding in the kernel; `None` when folding is off (`--max-events-per-sec 0`).
    kernel_folds: Option<KernelFolds>,
}

impl Agent {
    fn emit(&mut self, diagnoses: Vec<crate::diagnosis::Diagnosis>) {
        for mut d in diagnoses {
            // An event with no owner where one could exist: degraded evidence, said as such.
            if let Some(why) = &self.proc_hidden {
                if d.owner.is_none() && d.cause != Cause::NoListener {
                    d.evidence.set_owner_unavailable(why);
                }
            }
            self.counts.tally(&d);
            self.ext.observe(&d);
            for d in self.limiter.admit(d, monotonic_ns()) {
                self.write(&d);
            }
        }
        self.counts.suppressed = self.limiter.suppressed;
    }

    fn process(&mut self, decoded: Result<Record, DecodeError>) {
        match decoded {
            Ok(rec) => {
                self.counts.delivered += 1;
                self.heat(&rec);
                let d = self.pipeline.handle(&rec);
                self.emit(d);
            }
            Err(e) => {
                self.counts.undecodable += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    }

    fn drain(&mut self, sensor: &mut Sensor) {
        sensor.drain(|decoded| self.process(decoded));
    }

    /// Once a second: a new budget for every CPU, and the summaries of what the kernel folded
    /// in epochs no program can still add to (all of them at the end, `last`).
    fn kernel_folds(&mut self, last: bool) {
        let Some(folds) = self.kernel_folds.as_mut() else {
            return;
        };
        let now = monotonic_ns();
        if !last {
            if let Err(e) = folds.arm(now) {
                log::warn!("could not renew the kernel's record budget: {e}");
            }
        }
        let taken = folds.take(last, now);
        let per_cpu = folds.records_per_cpu();
        let summaries: Vec<_> = taken
            .iter()
            .filter_map(|f| self.pipeline.folded(f, per_cpu))
            .collect();
        self.emit(summaries);
    }

    /// Records that say a namespace's listen-drop counters are worth reading.
    fn heat(&mut self, rec: &Record) {
        let netns = rec.header().netns;
        match rec {
            Record::ListenerHot(_) | Record::ListenDrop(_) => self.poller.heat(netns, None),
            Record::SkbDrop(r) if r.rx_sk != 0 => self.poller.heat(netns, None),
            Record::SockState(r) if r.flags & STATE_TASK_VALID != 0 => {
                self.poller.heat(netns, Some(r.task.pid));
            }
            _ => {}
        }
    }

    /// The first reading of each namespace: counters to compare with later, listeners' owners.
    /// Nothing is reported yet (a listener already saturated is warned about on its next read).
    fn baseline(&mut self, readings: Readings) {
        for (netns, reading) in readings {
            let Ok(snap) = reading else { continue };
            self.learn_owners(netns, &snap);
            self.poller.interval(netns);
            let _ = self
                .poller
                .account(netns)
                .step(&snap, &HashMap::new(), 0, false);
        }
    }

    /// Turns namespace readings into findings. `flush`: the ring buffer was just drained for
    /// the last time; report every drop left.
    fn explain_readings(
        &mut self,
        readings: Vec<(u32, Result<NetnsSnapshot, String>)>,
        flush: bool,
    ) {
        let now = Instant::now();
        for (netns, reading) in readings {
            let snap = match reading {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("reading netns {netns}: {e}");
                    continue;
                }
            };
            self.learn_owners(netns, &snap);
            let interval = self.poller.interval(netns);
            let ack = self.pipeline.take_ack_time_drops(netns);
            let synq = self.pipeline.take_synq_per_packet(netns);
            let (findings, saturated) = self.poller.account(netns).step(&snap, &ack, synq, flush);
            if !findings.is_empty() || !saturated.is_empty() {
                self.poller.keep_hot(netns);
            }
            let mut out = Vec::with_capacity(findings.len());
            for f in &findings {
                out.push(self.pipeline.explain_finding(netns, f, &snap, interval));
            }
            for s in &saturated {
                let key = (netns, s.inode);
                if self
                    .warned
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= SATURATION_REPEAT)
                {
                    if self.warned.len() >= MAX_WARNED {
                        self.warned
                            .retain(|_, t| now.duration_since(*t) < SATURATION_REPEAT);
                        if self.warned.len() >= MAX_WARNED {
                            self.warned.clear();
                        }
                    }
                    self.warned.insert(key, now);
                    out.push(self.pipeline.explain_saturation(netns, s));
                }
            }
            self.emit(out);
        }
    }

    /// Listeners the events did not introduce (they predate the agent, or were inherited by
    /// forked workers): find which processes hold them.
    fn learn_owners(&mut self, netns: u32, snap: &sockdiag::NetnsSnapshot) {
        let fresh: HashSet<u64> = snap
            .listeners
            .iter()
            .map(|l| l.inode)
            .filter(|i| !self.scanned_inodes.contains(i))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let holders = procowners::holders_of(&fresh);
        // Forgetting means at worst one more /proc walk for a listener seen before.
        if self.scanned_inodes.len() + fresh.len() > MAX_SCANNED_INODES {
            self.scanned_inodes.clear();
        }
        let now = monotonic_ns();
        for l in snap.listeners.iter().filter(|l| fresh.contains(&l.inode)) {
            self.scanned_inodes.insert(l.inode);
            let owners = holders
                .get(&l.inode)
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            let task = Task {
                                pid: h.pid,
                                tid: h.pid,
                                comm: h.comm.clone(),
                                cgroup_id: 0,
                            };
                            Arc::new(Owner::from_task(
                                &task,
                                Learned::Procfs,
                                self.pipeline.host().cgroup_of(h.pid),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let local = Endpoint {
                addr: l.addr,
                port: l.port,
            };
            self.pipeline
                .discovered_listener(netns, local, l.inode, owners, Some(l.cap), now);
        }
    }

    fn kernel_counters(&self) -> KernelCounters {
        let mut values = vec![0u64; usize::try_from(COUNTERS_LEN).unwrap_or(0)];
        for (i, v) in values.iter_mut().enumerate() {
            let Ok(idx) = u32::try_from(i) else { break };
            if let Ok(per_cpu) = self.counters.get(&idx, 0) {
                *v = per_cpu.iter().sum();
            }
        }
        KernelCounters { values }
    }

    /// The per-cause totals of the stats line: the kernel's exact counters where they decide
    /// the cause, the agent's own counts elsewhere.
    fn totals(&self) -> (KernelCounters, BTreeMap<Cause, u64>) {
        let k = self.kernel_counters();
        let exact = exact_cause_counts(&k, &self.facts.rst_reasons, &WATCHED_DROP_REASONS);
        let causes = merged_causes(&exact, &self.counts.by_cause, true);
        (k, causes)
    }

    /// The stats line's figures, for a metrics scrape or `top`'s summary.
    fn snapshot(&self) -> Snapshot {
        let (k, causes) = self.totals();
        Snapshot {
            causes,
            delivered: self.counts.delivered,
            lost: k.lost(),
            undecodable: self.counts.undecodable,
            folded: self.counts.suppressed,
            resets_sent_tcp_stack: k.resets_sent(),
            resets_sent_netfilter: k.get(rst_trace_common::CounterFamily::ForeignReset, 0),
            owners: k.owner_table_counts(),
            tables: self.table_figures(&k),
            skipped_runs: self.skipped.read(),
            info: self.ext.info.clone(),
        }
    }

    /// Skipped runs per program, warned about when they grew.
    fn skipped_runs(&mut self) -> BTreeMap<String, u64> {
        let all = self.skipped.read();
        if let Some(w) = skipped_runs::warning(&all, &mut self.skipped_warned_at) {
            log::warn!("{w}");
        }
        all
    }

    /// Every bounded table, kernel and userspace, with its entries now.
    fn table_figures(&self, k: &KernelCounters) -> Vec<crate::occupancy::TableFigure> {
        use crate::occupancy::TableFigure;
        let mut v = self.kernel_tables.figures(&k.owner_table_counts());
        if let Some(f) = &self.kernel_folds {
            v.push(f.figure(k.get(
                rst_trace_common::CounterFamily::Table,
                rst_trace_common::TABLE_FOLDS_FULL,
            )));
        }
        v.extend(self.pipeline.figures());
        v.push(self.poller.figures());
        v.push(TableFigure::new(
            "scanned_listeners",
            self.scanned_inodes.len(),
            MAX_SCANNED_INODES,
        ));
        v.push(TableFigure::new(
            "saturation_warnings",
            self.warned.len(),
            MAX_WARNED,
        ));
        v
    }

    /// A diagnosis past storm folding, as a line, unless the embedder owns the terminal.
    fn write(&mut self, d: &crate::diagnosis::Diagnosis) {
        if self.ext.lines {
            self.out.diagnosis(d);
        }
    }

    fn write_record(&mut self, v: &serde_json::Value, text: impl FnOnce() -> String) {
        if self.ext.lines {
            self.out.record(v, text);
        }
    }

    fn stats(&mut self, last: bool) {
        for d in self.limiter.flush() {
            self.write(&d);
        }
        let (k, causes) = self.totals();
        let mut kernel = kernel_counts(&k, &self.facts.rst_reasons, &WATCHED_DROP_REASONS);
        kernel.skipped_runs = skipped_runs::nonzero(&self.skipped_runs());
        let v = event::Stats {
            time: rfc3339_nanos(std::time::SystemTime::now()),
            event: event::EventId {
                name: "rst_trace.stats".into(),
                kind: event::EventKind::Metric,
            },
            last,
            causes: causes.clone(),
            // The RSTs this host sent, apart from the incidents above: `tcp_stack` reconciles
            // with Tcp.OutRsts, `netfilter` is what REJECT rules sent (TCP does not count those).
            resets_sent: event::ResetsSent {
                tcp_stack: k.resets_sent(),
                netfilter: k.get(rst_trace_common::CounterFamily::ForeignReset, 0),
                by_cause: self.counts.resets_sent.clone(),
            },
            records: event::RecordCounts {
                delivered: self.counts.delivered,
                lost: k.lost(),
                undecodable: self.counts.undecodable,
                suppressed: self.counts.suppressed,
            },
            kernel,
            sockets: event::SocketCounts {
                listener_ports: self.pipeline.table().listener_ports() as u64,
                table_overflow: self.pipeline.table().overflow,
                owners: k.owner_tables(),
            },
            tables: crate::occupancy::occupancy(&self.table_figures(&k)),
            process: crate::occupancy::process(),
            output: None,
            host: crate::schema::host(),
            rst_trace: crate::schema::line_meta(),
        };
        let v = serde_json::to_value(&v).unwrap_or_default();
        let counts = self.counts.clone();
        self.write_record(&v, || stats_text(&causes, &k, &counts));
        // With JSON on stdout, a person at the terminal still gets the totals; text output
        // has just printed them (and `top` prints its own summary).
        if last && self.ext.lines && self.out.is_json() {
            eprintln!("rst-trace: {}", stats_text(&causes, &k, &self.counts));
        }
    }
}

fn stats_text(causes: &BTreeMap<Cause, u64>, k: &KernelCounters, c: &AgentCounts) -> String {
    let list: Vec<String> = causes
        .iter()
        .map(|(c, n)| format!("{}={n}", c.as_str()))
        .collect();
    format!(
        "totals: {} | records delivered={} lost={} undecodable={} folded={}",
        if list.is_empty() {
            "no events".to_owned()
        } else {
            list.join(" ")
        },
        c.delivered,
        k.lost(),
        c.undecodable,
        c.suppressed
    )
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let ext = match args.metrics_addr {
        Some(addr) => {
            crate::metrics::start(
                addr,
                usize::try_from(args.metrics_top_n).unwrap_or(usize::MAX),
            )
            .await?
        }
        None => Embedding::default(),
    };
    run_with(args, ext).await.map(drop)
}

/// `run`, with what an embedder adds (taps, totals on request, a stop); returns the final
/// totals.
pub async fn run_with(args: RunArgs, mut ext: Embedding) -> anyhow::Result<Snapshot> {
    limit_arenas();
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    // Opened before loading anything, so a bad --output-file fails at once.
    let out = Output::open(args.format, &crate::output::Target::from_args(&args))?;
    let netns = args.netns.as_deref().map(Netns::resolve).transpose()?;
    let (facts, mut loaded, btf) = load_kernel_side(&args, netns.as_ref())?;
    // The same per-cause summary as `rst-trace doctor`, for whoever reads the agent's log.
    let observability = doctor::report(&loaded, &facts);
    eprint!("rst-trace: observing on {}", doctor::text(&observability));
    let unavailable = loaded.unavailable_causes();
    if !unavailable.is_empty() {
        let names: Vec<&str> = unavailable.iter().map(|c| c.as_str()).collect();
        log::warn!("causes unavailable on this kernel: {}", names.join(", "));
    }
    if loaded.kernel_log_level > 0 {
        crate::kernel_log::spawn_reader(&mut loaded.ebpf)?;
    }
    // Before the pipeline takes the acceptor map.
    let kernel_tables = crate::occupancy::KernelTables::open(&loaded.ebpf);
    let maps = KernelMaps::take(&mut loaded, args.max_events_per_sec)?;
    let mut sensor = maps.sensor;
    let pipeline = new_pipeline(&facts, maps.acceptors);
    let accept_per_packet = accept_drops_per_packet(&loaded, &facts);
    ext.info = Arc::new(AgentInfo::from_loaded(&loaded));
    let requests = ext.snapshots.take();
    let stop = ext.stop.take();
    let mut agent = Agent {
        pipeline,
        out,
        limiter: Limiter::new(args.max_events_per_sec),
        counts: AgentCounts::default(),
        counters: maps.counters,
        facts,
        poller: Poller::start(netns.clone(), accept_per_packet),
        scanned_inodes: HashSet::new(),
        warned: HashMap::new(),
        ext,
        kernel_tables,
        proc_hidden: procowners::hidden_processes(),
        skipped: SkippedRuns::open(&loaded.ebpf),
        skipped_warned_at: 0,
        kernel_folds: maps.folds,
    };
    if let Some(why) = &agent.proc_hidden {
        log::warn!("{why}");
    }
    // The first reading is the baseline: drops counted from here on are the ones reported.
    let baseline = poller::read(agent.poller.baseline_namespaces());
    agent.baseline(baseline);
    // Kernel BTF and the start-up scans are done with: give their memory back.
    drop(btf);
    trim_heap();
    let memory = startup_memory();

    // Before anyone is told the agent is up: a supervisor may stop it the moment it is.
    let signals = Signals::install()?;
    let started = started_line(
        &args,
        netns.as_ref(),
        &loaded,
        &unavailable,
        &agent.facts,
        memory,
        &observability,
    );
    let netns_text = netns
        .as_ref()
        .map_or_else(|| "all".to_owned(), |n| n.inode.to_string());
    agent.ext.started(&started);
    agent.write_record(&started, || {
        format!(
            "rst-trace started: netns={netns_text} port={}",
            args.port.map_or_else(|| "any".into(), |p| p.to_string())
        )
    });
    // Ready only once a stop is handled (above): a service manager may send SIGTERM right after.
    crate::service::notify_ready();

    let reading = agent
        .serve(&args, &mut sensor, signals, requests, stop)
        .await?;
    // Nowhere to write the final lines: detach and exit 1, main prints the failure.
    if let Some(f) = agent.out.failure().cloned() {
        crate::detach::detach_all(loaded);
        return Err(f.into());
    }
    agent.finish(&mut sensor, reading).await;
    let totals = agent.snapshot();
    crate::detach::detach_all(loaded); // all programs at once: a prompt exit
    agent.out.finish()?;
    Ok(totals)
}

/// The first line the agent writes: what it watches and how, once every hook is attached.
fn started_line(
    args: &RunArgs,
    netns: Option<&Netns>,
    loaded: &loader::Loaded,
    unavailable: &[Cause],
    facts: &KernelFacts,
    memory: event::StartupMemory,
    observability: &event::Doctor,
) -> serde_json::Value {
    let started = event::Started {
        time: rfc3339_nanos(std::time::SystemTime::now()),
        event: event::EventId {
            name: "rst_trace.started".into(),
            kind: event::EventKind::State,
        },
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: observability.kernel.clone(),
        netns: netns.map(|n| n.inode),
        port: args.port,
        hooks: loaded.hook_statuses(),
        unavailable: unavailable.to_vec(),
        tracepoint_formats: facts.formats_found.clone(),
        memory,
        causes: observability.causes.clone(),
        host: crate::schema::host(),
        rst_trace: crate::schema::line_meta(),
    };
    // Plain data: serializing it cannot fail.
    serde_json::to_value(&started).unwrap_or_default()
}

/// Reads the running kernel's layout (tracefs formats, BTF), applies the filters and loads
/// and attaches the programs. The BTF is returned to be dropped once start-up is over.
fn load_kernel_side(
    args: &RunArgs,
    netns: Option<&Netns>,
) -> anyhow::Result<(KernelFacts, loader::Loaded, KernelBtf)> {
    let tracefs = Tracefs::locate_or_mount()?;
    let btf = KernelBtf::load()?;
    let mut facts = KernelFacts::discover(&tracefs, &btf);
    for w in &facts.warnings {
        log::warn!("{w}");
    }
    facts.layout.filter_netns = netns.map_or(0, |n| n.inode);
    facts.layout.filter_port = args.port.unwrap_or(0);
    facts.layout.ring_wake_shift = rst_trace_common::ring_wake_shift(
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    );
    preflight::raise_memlock();
    let loaded = loader::load(
        &facts.layout,
        facts
            .drop_reasons
            .value(WatchedDrop::TcpListenOverflow.kernel_name())
            .is_some(),
    )?;
    Ok((facts, loaded, btf))
}

/// The maps the agent reads, taken out of the loaded object.
struct KernelMaps {
    sensor: Sensor,
    counters: PerCpuArray<MapData, u64>,
    acceptors: aya::maps::HashMap<MapData, AcceptorKey, OwnerInfo>,
    folds: Option<KernelFolds>,
}

impl KernelMaps {
    /// `per_second`: the records a second each CPU may send of the kinds that fold (0: fold
    /// nothing in the kernel).
    fn take(loaded: &mut loader::Loaded, per_second: u64) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(
            loaded
                .ebpf
                .take_map(EVENTS_MAP)
                .context("ring buffer map missing from the eBPF object")?,
        )
        .context("opening the ring buffer")?;
        let counters = PerCpuArray::try_from(
            loaded
                .ebpf
                .take_map(COUNTERS_MAP)
                .context("counter map missing from the eBPF object")?,
        )
        .context("opening the counters")?;
        let sensor = Sensor::watch(ring).context("watching the ring buffer")?;
        let acceptors = aya::maps::HashMap::try_from(
            loaded
                .ebpf
                .take_map(ACCEPTORS_MAP)
                .context("acceptor map missing from the eBPF object")?,
        )
        .context("opening the acceptor map")?;
        let folds = if per_second == 0 {
            None
        } else {
            let budget = PerCpuArray::try_from(
                loaded
                    .ebpf
                    .take_map(FOLD_BUDGET_MAP)
                    .context("fold budget map missing from the eBPF object")?,
            )
            .context("opening the fold budget")?;
            let counts = match loaded
                .ebpf
                .take_map(FOLDS_MAP)
                .context("fold map missing from the eBPF object")?
            {
                aya::maps::Map::Array(data) => data,
                _ => anyhow::bail!("the fold map {FOLDS_MAP} is not an array"),
            };
            let cpus =
                aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
            let mut folds = KernelFolds::new(
                budget,
                counts,
                u32::try_from(per_second).unwrap_or(u32::MAX),
                cpus,
            )
            .map_err(|e| anyhow::anyhow!("opening the fold map: {e}"))?;
            folds
                .arm(monotonic_ns())
                .context("arming the kernel's record budget")?;
            Some(folds)
        };
        Ok(KernelMaps {
            sensor,
            counters,
            acceptors,
            folds,
        })
    }
}

/// The pipeline, seeded with the owners of the sockets older than the agent (only /proc
/// knows them).
fn new_pipeline(
    facts: &KernelFacts,
    acceptors: aya::maps::HashMap<MapData, AcceptorKey, OwnerInfo>,
) -> Pipeline<ProcHost> {
    let hz = kernel_hz().unwrap_or_else(|| {
        log::warn!("could not measure the kernel tick rate; assuming CONFIG_HZ=250 for idle times");
        250
    });
    let mut pipeline = Pipeline::new(
        facts.rst_reasons.clone(),
        facts.drop_reasons.clone(),
        ProcHost::with_acceptors(acceptors),
        WallClock::now(),
        hz,
    );
    let (seeds, unseeded) = procowners::all_socket_holders(MAX_SEEDED_SOCKETS);
    if unseeded > 0 {
        log::warn!(
            "{unseeded} sockets older than the agent exceed its table; their owners stay unknown"
        );
    }
    pipeline.seed(seeds);
    pipeline
}

/// Whether SYN-time and ACK-time accept queue overflows are both seen per packet, so the
/// poller need not read a namespace's counters for them.
fn accept_drops_per_packet(loaded: &loader::Loaded, facts: &KernelFacts) -> bool {
    let attached = |name: &str| {
        loaded
            .hooks
            .iter()
            .any(|h| h.program == name && h.is_attached())
    };
    let listen_overflow_reason = WatchedDrop::TcpListenOverflow.kernel_name();
    let ack_per_packet = attached(loader::hook::TCP_SYN_RECV_SOCK)
        || (attached(program::KFREE_SKB)
            && facts.drop_reasons.value(listen_overflow_reason).is_some());
    attached(loader::hook::TCP_CONN_REQUEST) && ack_per_packet
}

/// SIGTERM and SIGINT, which end the run.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }
}

/// The loop's timers.
struct Ticks {
    stats: tokio::time::Interval,
    fold: tokio::time::Interval,
    hold: tokio::time::Interval,
    poll: tokio::time::Interval,
    drain: tokio::time::Interval,
    skipped: tokio::time::Interval,
}

impl Ticks {
    fn new(args: &RunArgs) -> Self {
        use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};
        let stats_every = Duration::from_secs(args.stats_interval.max(1));
        let mut hold = interval(Duration::from_nanos(crate::correlate::RECEIVED_HOLD_NS));
        hold.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let poll_every = Duration::from_millis(args.poll_interval_ms);
        let mut poll = interval_at(Instant::now() + poll_every, poll_every);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The kernel wakes the agent only once records pile up (see deliver() in the eBPF
        // crate): a lone record waits at most this long.
        let mut drain = interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks {
            stats: interval_at(Instant::now() + stats_every, stats_every),
            fold: interval(Duration::from_secs(1)),
            hold,
            poll,
            drain,
            skipped: interval(SKIPPED_RUNS_EVERY),
        }
    }
}

impl Agent {
    /// The main loop, until a stop (signal, deadline, embedder) or a failed write. Returns the
    /// reading of namespaces still in flight, which `finish` waits for.
    async fn serve(
        &mut self,
        args: &RunArgs,
        sensor: &mut Sensor,
        mut signals: Signals,
        mut requests: Option<tokio::sync::mpsc::Receiver<crate::embed::SnapshotRequest>>,
        mut stop: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<Readings>>> {
        let deadline = async {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut ticks = Ticks::new(args);
        // At most one reading of namespaces in flight, on a blocking thread: the ring buffer is
        // never left waiting behind setns and sock_diag dumps.
        let mut reading: Option<tokio::task::JoinHandle<Readings>> = None;

        loop {
            // A failed write (reader gone, disk full, I/O error) ends the run.
            if self.out.failure().is_some() {
                break;
            }
            tokio::select! {
                woken = sensor.woken() => {
                    woken.context("waiting on the ring buffer")?;
                    self.drain(sensor);
                }
                _ = ticks.drain.tick() => self.drain(sensor),
                _ = ticks.hold.tick(), if self.pipeline.holding_received() => {
                    let held = self.pipeline.release_received(false);
                    self.emit(held);
                }
                _ = ticks.fold.tick() => {
                    self.kernel_folds(false);
                    self.pipeline.expire();
                    let stale = self.pipeline.expire_foreign_resets();
                    self.emit(stale);
                    for d in self.limiter.flush() {
                        self.write(&d);
                    }
                }
                _ = ticks.poll.tick(), if reading.is_none() => {
                    let due = self.poller.due();
                    for netns in self.poller.take_gone() {
                        self.pipeline.forget_netns(netns);
                    }
                    if !due.is_empty() {
                        reading = Some(tokio::task::spawn_blocking(move || poller::read(due)));
                    }
                }
                done = async { reading.as_mut().expect("guarded by the select condition").await }, if reading.is_some() => {
                    reading = None;
                    // Per-packet records first, so polling does not count them again.
                    self.drain(sensor);
                    match done {
                        Ok(readings) => self.explain_readings(readings, false),
                        Err(e) => log::warn!("reading namespaces failed: {e}"),
                    }
                }
                _ = ticks.stats.tick(), if args.stats_interval > 0 => self.stats(false),
                _ = ticks.skipped.tick() => {
                    self.skipped_runs();
                }
                // A metrics scrape: the totals are read now, not on a timer, and after whatever
                // the kernel has written (it wakes the agent only once records pile up).
                req = Embedding::next_request(&mut requests) => {
                    self.drain(sensor);
                    req.answer(self.snapshot());
                }
                () = Embedding::stopped(&mut stop) => break,
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                () = &mut deadline => break,
                // SIGHUP reopens --output-file; stdout's reader going away is a failure.
                a = self.out.attention() => self.out.attend(a),
            }
        }
        Ok(reading)
    }

    /// Whatever the kernel already wrote is still explained, and every namespace read once
    /// more, before the final totals.
    async fn finish(
        &mut self,
        sensor: &mut Sensor,
        reading: Option<tokio::task::JoinHandle<Readings>>,
    ) {
        if let Some(r) = reading {
            if let Ok(readings) = r.await {
                self.drain(sensor);
                self.explain_readings(readings, false);
            }
        }
        self.drain(sensor);
        let last = poller::read(self.poller.everything());
        self.explain_readings(last, true);
        let stale = self.pipeline.expire_foreign_resets();
        self.emit(stale);
        let held = self.pipeline.release_received(true);
        self.emit(held);
        self.kernel_folds(true);
        self.stats(true);
    }
}

type Readings = Vec<(u32, Result<NetnsSnapshot, String>)>;

/// The start-up peak (parsing the kernel's BTF) and the resident size once it is over. The peak
/// is then reset, so the process's peak figure (VmHWM) from here on is what running costs; the
/// start-up peak stays on record in the started line.
fn startup_memory() -> event::StartupMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let peak = kib("VmHWM:");
    let rss = kib("VmRSS:");
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        log::debug!("resetting the peak RSS: {e}");
    }
    event::StartupMemory {
        startup_peak_kib: peak,
        rss_after_start_kib: rss,
    }
}

/// One malloc arena for the whole agent. Every namespace is read from a short-lived thread
/// of its own, and glibc gives each new thread a fresh arena (up to 8 per CPU) whose freed
/// memory stays resident: under namespace churn that alone took the agent from 16 to 64 MiB.
/// The threads rarely allocate at the same time, so sharing one arena costs nothing.
fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before the agent's threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap to the kernel: parsing the kernel's BTF at start-up leaves tens of MiB
/// of freed but mapped memory that would otherwise count against the agent forever.
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
