//! A veth pair between two test namespaces, for scenarios that need two hosts (a client and a
//! server that can go silent, or a load generator outside the namespace under test).
//!
//! The pair is created inside the first namespace with its peer end moved straight into the
//! second one, so no interface ever appears in the host's namespace. Nothing to clean up: deleting
//! either namespace (the [`Netns`] guards do) destroys both ends.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Netns;

/// Interface name of the end in the first namespace.
pub const DEV_A: &str = "rstveth-a";
/// Interface name of the end in the second namespace.
pub const DEV_B: &str = "rstveth-b";

/// The addresses of a linked pair: one IPv4 /24 and one IPv6 unique-local /64, private to the
/// two namespaces.
#[derive(Debug, Clone, Copy)]
pub struct Veth {
    /// address of [`DEV_A`] in the first namespace
    pub a: Ipv4Addr,
    /// address of [`DEV_B`] in the second namespace
    pub b: Ipv4Addr,
    /// IPv6 address of [`DEV_A`]
    pub a6: Ipv6Addr,
    /// IPv6 address of [`DEV_B`]
    pub b6: Ipv6Addr,
}

impl Veth {
    /// The first end's address in `family`.
    pub fn addr_a(&self, family: crate::scenarios::Family) -> String {
        match family {
            crate::scenarios::Family::V4 => self.a.to_string(),
            crate::scenarios::Family::V6 => self.a6.to_string(),
        }
    }

    /// The second end's address in `family`.
    pub fn addr_b(&self, family: crate::scenarios::Family) -> String {
        match family {
            crate::scenarios::Family::V4 => self.b.to_string(),
            crate::scenarios::Family::V6 => self.b6.to_string(),
        }
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Link `a` and `b` with a veth pair: 10.203.0.1/24 and fd00:203::1/64 in `a`, 10.203.0.2/24
/// and fd00:203::2/64 in `b`, both up. The IPv6 addresses skip duplicate address detection
/// (`nodad`: nothing else is on the link), so they are usable at once. Waits (bounded) until
/// both ends have carrier. Panics on failure.
pub fn link(a: &Netns, b: &Netns) -> Veth {
    let v = Veth {
        a: Ipv4Addr::new(10, 203, 0, 1),
        b: Ipv4Addr::new(10, 203, 0, 2),
        a6: Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 1),
        b6: Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 2),
    };
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        DEV_A,
        "type",
        "veth",
        "peer",
        "name",
        DEV_B,
        "netns",
        b.name(),
    ]);
    ip(&[
        "-n",
        a.name(),
        "addr",
        "add",
        &format!("{}/24", v.a),
        "dev",
        DEV_A,
    ]);
    ip(&[
        "-n",
        b.name(),
        "addr",
        "add",
        &format!("{}/24", v.b),
        "dev",
        DEV_B,
    ]);
    for (ns, addr, dev) in [(a, v.a6, DEV_A), (b, v.b6, DEV_B)] {
        ip(&[
            "-n",
            ns.name(),
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }
    ip(&["-n", a.name(), "link", "set", DEV_A, "up"]);
    ip(&["-n", b.name(), "link", "set", DEV_B, "up"]);
    let up = crate::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let la = ip(&["-n", a.name(), "-o", "link", "show", DEV_A]);
        let lb = ip(&["-n", b.name(), "-o", "link", "show", DEV_B]);
        (la.contains("LOWER_UP") && lb.contains("LOWER_UP")).then_some(())
    });
    assert!(
        up.is_some(),
        "veth {DEV_A}/{DEV_B} between {} and {} has no carrier after 5 s",
        a.name(),
        b.name()
    );
    v
}
