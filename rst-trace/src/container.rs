//! Which container (and Kubernetes pod) a process runs in, read from its cgroup path.
//!
//! Container runtimes name a container's cgroup after the container id (64 hex digits), and
//! the kubelet names a pod's cgroup after the pod uid. The shapes differ by runtime, by cgroup
//! driver (systemd: `…/<prefix>-<id>.scope`; cgroupfs: `…/<id>`) and by cgroup version, so
//! this module knows each shape explicitly rather than taking any 64-hex-digit tail: the
//! monitor processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) carry the id of the container
//! they watch, yet are not inside it.
//!
//! Shapes recognised (the innermost match wins, so nested containers name the inner one):
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | Docker | `/system.slice/docker-<id>.scope` | `/docker/<id>` |
//! | containerd (CRI) | `/kubepods.slice/…/cri-containerd-<id>.scope` | `/kubepods/<qos>/pod<uid>/<id>` |
//! | CRI-O | `/kubepods.slice/…/crio-<id>.scope` | `/kubepods/<qos>/pod<uid>/crio-<id>` |
//! | Podman | `/machine.slice/libpod-<id>.scope[/container]` | `/libpod_parent/libpod-<id>` |
//!
//! Pod uids: `kubepods-<qos>-pod<uid, '-' written '_'>.slice` (systemd driver) and
//! `/kubepods/[<qos>/]pod<uid>` (cgroupfs); both give the uid with dashes.

/// A container id: exactly 64 lowercase or uppercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runtime prefixes of a container's own cgroup (systemd scope or cgroupfs directory).
const RUNTIME_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// Monitor processes next to a container: they carry its id but are not in it.
const MONITOR_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// What one path segment says about containers.
enum Segment<'a> {
    Container(&'a str),
    /// A runtime's monitor (conmon): the process is outside any container.
    Monitor,
    Other,
}

fn classify(segment: &str) -> Segment<'_> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if MONITOR_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Segment::Monitor;
    }
    for prefix in RUNTIME_PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            if is_container_id(id) {
                return Segment::Container(id);
            }
        }
    }
    // cgroupfs driver: the directory is the bare id (Docker, containerd under kubepods).
    // A bare id with a `.scope` suffix is no known shape, so only the unsuffixed name counts.
    if name.len() == segment.len() && is_container_id(name) {
        return Segment::Container(name);
    }
    Segment::Other
}

/// The container id in a cgroup path, lowercased, e.g. from
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod…slice/cri-containerd-<id>.scope`.
pub fn container_id_from_cgroup(path: &str) -> Option<String> {
    for segment in path.rsplit('/') {
        match classify(segment) {
            Segment::Container(id) => return Some(id.to_ascii_lowercase()),
            // The monitor sits beside its container, never inside another one: stop here
            // rather than take an id from further up.
            Segment::Monitor => return None,
            Segment::Other => {}
        }
    }
    None
}

/// A pod uid as the kubelet writes it: a UUID (8-4-4-4-12 hex digits), or 32 hex digits for
/// static pods, whose uid is a hash of their manifest.
fn is_pod_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let hex = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_hexdigit());
    match groups.as_slice() {
        [one] => one.len() == 32 && hex(one),
        [a, b, c, d, e] => {
            [a.len(), b.len(), c.len(), d.len(), e.len()] == [8, 4, 4, 4, 12]
                && groups.iter().all(|g| hex(g))
        }
        _ => false,
    }
}

/// The Kubernetes pod uid in a cgroup path (dashes restored), e.g. from
/// `kubepods-besteffort-pod0f3c…_…slice` or `/kubepods/burstable/pod0f3c…-…/<id>`.
pub fn pod_uid_from_cgroup(path: &str) -> Option<String> {
    // Only below a kubepods cgroup: a directory that merely starts with "pod" elsewhere is not a pod.
    let mut below_kubepods = false;
    let mut found = None;
    for segment in path.split('/') {
        if let Some(slice) = segment.strip_suffix(".slice") {
            // systemd driver: `kubepods-pod<uid>.slice`, `kubepods-<qos>-pod<uid>.slice`
            // (`kubelet-kubepods-…` where the kubelet has its own cgroup root, as kind does).
            if slice.contains("kubepods") {
                below_kubepods = true;
                if let Some((_, uid)) = slice.rsplit_once("-pod") {
                    let uid = uid.replace('_', "-");
                    if is_pod_uid(&uid) {
                        found = Some(uid.to_ascii_lowercase());
                    }
                }
            }
        } else if segment == "kubepods" {
            below_kubepods = true;
        } else if below_kubepods {
            if let Some(uid) = segment.strip_prefix("pod") {
                if is_pod_uid(uid) {
                    found = Some(uid.to_ascii_lowercase());
                }
            }
        }
    }
    found
}

/// The cgroup path of a process to report, from the text of `/proc/<pid>/cgroup`.
///
/// On a pure cgroup v2 host there is one line, `0::<path>`. On hybrid hosts (cgroup v1
/// controllers plus a `unified` hierarchy) the v2 line is often just `/` or the runtime's
/// service while the v1 controller lines name the container, so: the first line whose path
/// names a container, else one that names a pod, else the v2 line, else the first line.
pub fn cgroup_from_proc(text: &str) -> Option<String> {
    // v2 first: where it names the container, it is the path that matters on modern hosts.
    let paths = || {
        let v2 = text.lines().filter_map(|l| l.strip_prefix("0::"));
        let v1 = text
            .lines()
            .filter(|l| !l.starts_with("0::"))
            .filter_map(|l| l.splitn(3, ':').nth(2));
        v2.chain(v1)
    };
    paths()
        .find(|p| container_id_from_cgroup(p).is_some())
        .or_else(|| paths().find(|p| pod_uid_from_cgroup(p).is_some()))
        .or_else(|| paths().next())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9b0e8a7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c";
    const UID: &str = "0f3c5a7e-1b2d-4c6e-8f90-a1b2c3d4e5f6";

    fn uid_underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn docker_systemd_driver() {
        let p = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p), None);
    }

    #[test]
    fn docker_cgroupfs_driver() {
        assert_eq!(
            container_id_from_cgroup(&format!("/docker/{ID}")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn docker_in_docker_names_the_inner_container() {
        let inner = "a".repeat(64);
        let p = format!("/docker/{ID}/docker/{inner}");
        assert_eq!(container_id_from_cgroup(&p), Some(inner));
    }

    #[test]
    fn containerd_systemd_driver_burstable_pod() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid_underscored()
        );
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
    }

    #[test]
    fn containerd_systemd_driver_guaranteed_pod() {
        // Guaranteed pods sit directly under kubepods.slice, with no QoS level.
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            uid_underscored()
        );
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
    }

    #[test]
    fn containerd_cgroupfs_driver() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
        let guaranteed = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(pod_uid_from_cgroup(&guaranteed).as_deref(), Some(UID));
    }

    #[test]
    fn crio_systemd_driver() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope",
            uid_underscored()
        );
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-conmon-{ID}.scope",
            uid_underscored()
        );
        assert_eq!(container_id_from_cgroup(&p), None);
        // conmon still runs inside the pod's cgroup.
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/crio-conmon-{ID}");
        assert_eq!(container_id_from_cgroup(&cgroupfs), None);
    }

    #[test]
    fn crio_cgroupfs_driver() {
        let p = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
    }

    #[test]
    fn podman_systemd_driver_and_its_container_subgroup() {
        let p = format!("/machine.slice/libpod-{ID}.scope");
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        // cgroup v2 with a split cgroup: the payload lives in a `container` child.
        let split = format!("/machine.slice/libpod-{ID}.scope/container");
        assert_eq!(container_id_from_cgroup(&split).as_deref(), Some(ID));
        // Rootless podman, under the user's systemd instance.
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        assert_eq!(container_id_from_cgroup(&rootless).as_deref(), Some(ID));
    }

    #[test]
    fn podman_cgroupfs_driver() {
        assert_eq!(
            container_id_from_cgroup(&format!("/libpod_parent/libpod-{ID}")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn podman_conmon_is_not_the_container() {
        assert_eq!(
            container_id_from_cgroup(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            container_id_from_cgroup(&format!("/libpod_parent/conmon/libpod-conmon-{ID}")),
            None
        );
    }

    #[test]
    fn kind_node_with_a_kubelet_cgroup_root() {
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid_underscored()
        );
        assert_eq!(container_id_from_cgroup(&p).as_deref(), Some(ID));
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(UID));
    }

    #[test]
    fn static_pod_uid_is_a_hash() {
        let hash = "5e8c1f0d2b3a4c6e8f9012a3b4c5d6e7";
        let p = format!("/kubepods/burstable/pod{hash}/{ID}");
        assert_eq!(pod_uid_from_cgroup(&p).as_deref(), Some(hash));
    }

    #[test]
    fn uppercase_hex_is_normalised() {
        let upper = ID.to_ascii_uppercase();
        assert_eq!(
            container_id_from_cgroup(&format!("/docker/{upper}")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn ordinary_cgroups_name_no_container_nor_pod() {
        for p in [
            "/",
            "",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/nginx.service",
            "/system.slice/containerd.service",
            // 63 and 65 hex digits, and a non-hex character.
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{ID}0"),
            &format!("/system.slice/docker-{}g.scope", &ID[..63]),
            // Some other program's scope ending in 64 hex digits.
            &format!("/system.slice/backup-{ID}.scope"),
            // A directory named like a pod, but not under kubepods.
            &format!("/podcasts/pod{UID}"),
            // kubepods QoS slices without a pod.
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/besteffort",
        ] {
            assert_eq!(container_id_from_cgroup(p), None, "{p}");
            assert_eq!(pod_uid_from_cgroup(p), None, "{p}");
        }
        assert_eq!(
            pod_uid_from_cgroup("/kubepods/burstable/podnot-a-uid/x"),
            None
        );
    }

    #[test]
    fn proc_cgroup_of_a_pure_v2_host() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            cgroup_from_proc(&text),
            Some(format!("/system.slice/docker-{ID}.scope"))
        );
        assert_eq!(
            cgroup_from_proc("0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
    }

    #[test]
    fn proc_cgroup_of_a_hybrid_host_takes_the_line_naming_the_container() {
        // Docker with the cgroupfs driver on a v1 host whose systemd also mounts `unified`.
        let text = format!(
            "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(cgroup_from_proc(&text), Some(format!("/docker/{ID}")));
        // Nothing names a container: the v2 line, as before.
        let plain = "4:memory:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/\n";
        assert_eq!(cgroup_from_proc(plain).as_deref(), Some("/"));
        // v1 only: the first line.
        assert_eq!(
            cgroup_from_proc("2:cpu:/a\n1:memory:/b\n").as_deref(),
            Some("/a")
        );
        assert_eq!(cgroup_from_proc(""), None);
    }

    #[test]
    fn proc_cgroup_prefers_a_pod_over_nothing() {
        let text = format!("3:pids:/kubepods/besteffort/pod{UID}/crio-conmon-{ID}\n0::/\n");
        assert_eq!(
            cgroup_from_proc(&text),
            Some(format!("/kubepods/besteffort/pod{UID}/crio-conmon-{ID}"))
        );
    }
}
