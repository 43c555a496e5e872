//! A storm of RSTs: per-event records may be folded into summaries (and could be lost), but
//! the per-cause totals stay exact and every record not delivered is accounted for.

use std::time::Duration;

use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns};

const SYNS: u32 = 20_000;

#[test]
fn rst_storm_totals_stay_exact() {
    require_root();
    let ns = Netns::new();
    let port = 41301u16;
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start_args(&[
        "run".into(),
        "--format".into(),
        "json".into(),
        "--netns".into(),
        ns.name().into(),
        "--max-events-per-sec".into(),
        "50".into(),
    ]);
    // hping3's SYNs come from a raw socket: each is answered by an RST (no listener), which
    // hping3's own kernel then ignores, so OutRsts counts exactly one RST per SYN delivered.
    let out = ns
        .command(
            "hping3",
            &[
                "-q",
                "-S",
                "-p",
                &port.to_string(),
                "-c",
                &SYNS.to_string(),
                "-i",
                "u20",
                "127.0.0.1",
            ],
        )
        .output()
        .expect("hping3 runs");
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "hping3: {out:?}"
    );
    // Bounded wait for the kernel to finish answering.
    let mut after = Mib::snapshot(&ns);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        let now = Mib::snapshot(&ns);
        if mib::delta(&after, &now, "Tcp.OutRsts") == 0 {
            break;
        }
        after = now;
    }
    let stopped = agent.stop();
    let rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    assert!(
        rsts > i64::from(SYNS) / 2,
        "the storm was too small: OutRsts {rsts}"
    );

    let events = stopped.causes(|v| event::has_cause(v, "no_listener"));
    let summed: u64 = events.iter().filter_map(event::count).sum();
    let lost = event::stats_lost(&stopped.final_stats).expect("records.lost in final stats");
    let total = event::stats_cause(&stopped.final_stats, "no_listener");
    assert_eq!(
        total as i64, rsts,
        "final per-cause total vs Tcp.OutRsts: {}",
        stopped.final_stats
    );
    assert_eq!(
        summed + lost,
        total,
        "events (with folded counts) + lost records account for every RST"
    );
    assert!(
        events.len() < (total as usize) / 10,
        "a storm must be folded, got {} lines for {total}",
        events.len()
    );
    assert!(
        events
            .iter()
            .any(|v| event::get(v, "evidence.sampled").is_some()),
        "folded summaries say so in evidence.sampled"
    );
    // Past the agent's budget the kernel folds (no record per RST): at 50 a second a CPU,
    // the records delivered are a small part of the storm.
    let delivered = event::get(&stopped.final_stats, "records.delivered")
        .and_then(serde_json::Value::as_u64)
        .expect("records.delivered in final stats");
    assert!(
        delivered < total / 2,
        "the kernel sent {delivered} records for {total} RSTs: storms are folded in the kernel"
    );
    // One source, one port: one key per CPU a second, which always finds a slot.
    assert_eq!(
        event::get(&stopped.final_stats, "tables.RST_FOLDS.refused")
            .and_then(serde_json::Value::as_u64),
        Some(0),
        "no storm RST found its fold slots taken"
    );
    for v in events
        .iter()
        .filter(|v| event::get(v, "evidence.sampled").is_some())
    {
        assert_eq!(
            event::local_port(v),
            Some(port),
            "a summary names the port: {v}"
        );
    }
}
