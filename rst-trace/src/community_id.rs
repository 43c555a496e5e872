//! Community ID flow hashing, version 1 (corelight/community-id-spec), as Zeek, Suricata and
//! Elastic compute it, so an rst-trace event joins the same flow in those tools' records.
//!
//! `1:` + base64(SHA-1(seed (2 bytes, network order) · lower address · higher address ·
//! protocol (1 byte) · 0 (1 byte) · lower endpoint's port · higher endpoint's port)), where
//! "lower" is the endpoint with the smaller address, or with the smaller port when the addresses
//! are equal: both directions of a flow hash to the same value.
use std::net::IpAddr;

use base64::Engine as _;

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// The flow hash of `proto` between two endpoints, with the given seed (0 unless every tool of
/// the deployment is configured with another). Only protocols with ports (TCP, UDP, SCTP)
/// hash this way; ICMP's type/code rules are not implemented because rst-trace reports TCP.
/// `None` when the two addresses are not of the same family.
pub fn community_id_v1(
    seed: u16,
    proto: u8,
    (a_addr, a_port): (IpAddr, u16),
    (b_addr, b_port): (IpAddr, u16),
) -> Option<String> {
    // Octets in network order; IPv4 is hashed as 4 bytes, IPv6 as 16.
    let octets = |ip: IpAddr| -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    };
    if a_addr.is_ipv4() != b_addr.is_ipv4() {
        return None;
    }
    let (a, b) = (octets(a_addr), octets(b_addr));
    // The spec orders by (address bytes, port): the same pair either way round.
    let ((lo_addr, lo_port), (hi_addr, hi_port)) = if (&a, a_port) <= (&b, b_port) {
        ((a, a_port), (b, b_port))
    } else {
        ((b, b_port), (a, a_port))
    };
    let mut h = sha1_smol::Sha1::new();
    h.update(&seed.to_be_bytes());
    h.update(&lo_addr);
    h.update(&hi_addr);
    h.update(&[proto, 0]);
    h.update(&lo_port.to_be_bytes());
    h.update(&hi_port.to_be_bytes());
    let digest = h.digest().bytes();
    Some(format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// The Community ID (seed 0) of a TCP connection, as the default configurations of Zeek,
/// Suricata and Elastic compute it.
pub fn tcp(local: (IpAddr, u16), remote: (IpAddr, u16)) -> Option<String> {
    community_id_v1(0, PROTO_TCP, local, remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str, port: u16) -> (IpAddr, u16) {
        (s.parse().expect("test address"), port)
    }

    /// Vectors from the spec repository's baseline/baseline_deflt.json (seed 0) and
    /// baseline/baseline_seed1.json (seed 1): every flow is listed in both directions there,
    /// with the same hash.
    const BASELINE: &[(u16, u8, &str, u16, &str, u16, &str)] = &[
        (
            0,
            6,
            "128.232.110.120",
            34855,
            "66.35.250.204",
            80,
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        ),
        (
            0,
            6,
            "66.35.250.204",
            80,
            "128.232.110.120",
            34855,
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        ),
        (
            0,
            6,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            63943,
            "2607:f8b0:400c:c03::1a",
            25,
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (
            0,
            6,
            "2607:f8b0:400c:c03::1a",
            25,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            63943,
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
        ),
        (
            0,
            17,
            "192.168.1.52",
            54585,
            "8.8.8.8",
            53,
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
        ),
        (
            0,
            17,
            "8.8.8.8",
            53,
            "192.168.1.52",
            54585,
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
        ),
        // Equal ports: the order comes from the addresses alone.
        (
            0,
            132,
            "192.168.170.8",
            7,
            "192.168.170.56",
            7,
            "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
        ),
        (
            0,
            132,
            "192.168.170.56",
            7,
            "192.168.170.8",
            7,
            "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
        ),
        (
            1,
            6,
            "128.232.110.120",
            34855,
            "66.35.250.204",
            80,
            "1:3V71V58M3Ksw/yuFALMcW0LAHvc=",
        ),
        (
            1,
            6,
            "66.35.250.204",
            80,
            "128.232.110.120",
            34855,
            "1:3V71V58M3Ksw/yuFALMcW0LAHvc=",
        ),
        (
            1,
            6,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            63943,
            "2607:f8b0:400c:c03::1a",
            25,
            "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
        ),
        (
            1,
            17,
            "8.8.8.8",
            53,
            "192.168.1.52",
            54585,
            "1:Q9We8WO3piVF8yEQBNJF4uiSVrI=",
        ),
    ];

    #[test]
    fn matches_the_spec_baseline() {
        for &(seed, proto, sa, sp, da, dp, want) in BASELINE {
            assert_eq!(
                community_id_v1(seed, proto, ep(sa, sp), ep(da, dp)).as_deref(),
                Some(want),
                "seed {seed} proto {proto} {sa}:{sp} -> {da}:{dp}"
            );
        }
    }

    #[test]
    fn tcp_helper_is_seed_zero() {
        assert_eq!(
            tcp(ep("66.35.250.204", 80), ep("128.232.110.120", 34855)).as_deref(),
            Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")
        );
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = tcp(ep("127.0.0.1", 8080), ep("127.0.0.1", 40000));
        let b = tcp(ep("127.0.0.1", 40000), ep("127.0.0.1", 8080));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, tcp(ep("127.0.0.1", 8081), ep("127.0.0.1", 40000)));
    }

    #[test]
    fn mixed_families_have_no_id() {
        assert_eq!(tcp(ep("127.0.0.1", 1), ep("::1", 2)), None);
    }
}
