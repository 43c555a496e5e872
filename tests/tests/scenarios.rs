//! The shared cause scenarios (rst_trace_tests::scenarios) on the host, each in a fresh
//! namespace with its own agent, on both address families. The QEMU guest runner runs the very
//! same bodies (`cargo xtask integration-test vm`); the names here are the guest's names.

use rst_trace_tests::scenarios::host;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                host::run(stringify!($name), PEER);
            }
        )*

        /// Every shared scenario has its test here: a new one cannot be forgotten on the host.
        #[test]
        fn every_shared_scenario_runs_on_the_host() {
            let here: Vec<&str> = vec![$(stringify!($name)),*];
            let shared: Vec<String> = rst_trace_tests::scenarios::all()
                .into_iter()
                .map(|(n, _, _)| n)
                .collect();
            assert_eq!(here, shared, "tests/tests/scenarios.rs lists other scenarios than the library");
        }
    };
}

scenarios!(
    no_listener_v4,
    no_listener_v6,
    accept_queue_overflow_v4,
    accept_queue_overflow_v6,
    reuseport_group_v4,
    reuseport_group_v6,
    ack_time_overflow_v4,
    ack_time_overflow_v6,
    ack_time_overflow_v4_mapped,
    ack_time_overflow_abort_v4,
    ack_time_overflow_abort_v6,
    abort_on_overflow_burst_v4,
    abort_on_overflow_burst_v6,
    fd_exhaustion_v4,
    fd_exhaustion_v6,
    ephemeral_port_exhaustion_v4,
    ephemeral_port_exhaustion_v6,
    reset_after_idle_v4,
    reset_after_idle_v6,
    timewait_segment_v4,
    timewait_segment_v6,
    firewall_v4,
    firewall_v6,
    keepalive_timeout_v4,
    keepalive_timeout_v6,
    rst_storm_v4,
    rst_storm_v6,
    abort_on_close_v4,
    abort_on_close_v6,
    abort_by_application_v4,
    abort_by_application_v6,
);

/// The raw tracepoint programs the agent keeps as fallbacks for its BTF ones (`tcp_send_reset`,
/// `tcp_receive_reset`, `net_dev_queue`), which this kernel would not otherwise run: the
/// scenarios of the causes they serve, on both families, with the agent asked for them.
mod raw_tracepoint_fallbacks {
    use super::{host, PEER};
    use rst_trace_common::names::RAW_TRACEPOINTS_ENV;

    const RAW: &[(&str, &str)] = &[(RAW_TRACEPOINTS_ENV, "1")];

    macro_rules! fallback_scenarios {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    host::run_with(stringify!($name), PEER, RAW);
                }
            )*
        };
    }

    fallback_scenarios!(
        no_listener_v4,
        no_listener_v6,
        firewall_v4,
        firewall_v6,
        rst_storm_v4,
        rst_storm_v6,
        reset_after_idle_v4,
        abort_on_close_v6,
        timewait_segment_v4,
    );
}
