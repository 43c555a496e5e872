//! deploy/kubernetes/daemonset.yaml, checked offline (no cluster here):
//! * kubernetes-validate (PyPI, schemas shipped in the package; installed into a venv under
//!   target/ when missing) accepts every object, strictly, for Kubernetes 1.30 (the first
//!   release with `appArmorProfile`) and for the newest schema the package carries; a
//!   misspelt field is rejected, so the validator is really looking;
//! * the DaemonSet is not privileged and holds exactly the systemd unit's measured
//!   capabilities, all others dropped; hostPID; tolerates every taint; requests and limits;
//!   Prometheus scrape annotations matching `--metrics-addr 0.0.0.0:9464`; its own
//!   ServiceAccount; read-only tracefs and BTF mounts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rst_trace_tests::deploy::{deploy_file, unit_capabilities};
use serde_json::Value;

/// The validator's release these checks were written against.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const OLDEST_K8S: &str = "1.30.0";

fn venv() -> PathBuf {
    rst_trace_tests::workspace_root().join("target/deploy-venv")
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// target/deploy-venv/bin/kubernetes-validate, installing it first when missing. A lock file
/// keeps concurrent test binaries from installing into the venv at the same time.
fn validator() -> PathBuf {
    let bin = venv().join("bin/kubernetes-validate");
    if bin.is_file() {
        return bin;
    }
    std::fs::create_dir_all(venv().parent().expect("target dir")).expect("mkdir target");
    let lock = std::fs::File::create(venv().with_extension("lock")).expect("venv lock file");
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .map(|guard| {
            if !bin.is_file() {
                let out = output(Command::new("python3").args(["-m", "venv"]).arg(venv()));
                assert!(
                    out.status.success(),
                    "python3 -m venv {} failed (Debian needs python3-venv; cargo xtask setup installs it):\n{}",
                    venv().display(),
                    text(&out)
                );
                let pip = venv().join("bin/pip");
                let out = output(
                    Command::new(&pip).args(["install", "--quiet", KUBERNETES_VALIDATE]),
                );
                assert!(
                    out.status.success(),
                    "pip install {KUBERNETES_VALIDATE} failed:\n{}",
                    text(&out)
                );
            }
            drop(guard);
        })
        .unwrap_or_else(|e| panic!("lock {}: {e}", venv().display()));
    assert!(bin.is_file(), "{} missing after install", bin.display());
    bin
}

fn validate(manifest: &Path, k8s: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(validator());
    cmd.arg("--strict");
    if let Some(v) = k8s {
        cmd.args(["-k", v]);
    }
    let out = output(cmd.arg(manifest));
    (out.status.success(), text(&out))
}

#[test]
fn kubernetes_validate_accepts_the_manifests_offline() {
    let manifest = deploy_file("kubernetes/daemonset.yaml");
    for k8s in [Some(OLDEST_K8S), None] {
        let (ok, out) = validate(&manifest, k8s);
        let version = k8s.unwrap_or("the newest schema");
        assert!(ok, "kubernetes-validate against {version}:\n{out}");
        for kind in ["namespace/", "serviceaccount/", "daemonset/"] {
            assert!(
                out.lines()
                    .any(|l| l.contains("passed") && l.contains(kind)),
                "kubernetes-validate ({version}) did not report {kind} as passed:\n{out}"
            );
        }
    }
}

#[test]
fn kubernetes_validate_rejects_a_misspelt_field() {
    let text = std::fs::read_to_string(deploy_file("kubernetes/daemonset.yaml"))
        .expect("read daemonset.yaml");
    assert!(text.contains("allowPrivilegeEscalation:"));
    let dir = std::env::temp_dir().join(format!("rsttest-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bad = dir.join("daemonset.yaml");
    std::fs::write(
        &bad,
        text.replace("allowPrivilegeEscalation:", "allowPrivilegeEscalaton:"),
    )
    .expect("write");
    let (ok, out) = validate(&bad, Some(OLDEST_K8S));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !ok,
        "kubernetes-validate --strict accepted a misspelt field:\n{out}"
    );
}

/// Every object of the manifest, as JSON (PyYAML comes with kubernetes-validate).
fn objects() -> Vec<Value> {
    let python = {
        validator();
        venv().join("bin/python")
    };
    let out = output(
        Command::new(python)
            .args([
                "-c",
                "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ])
            .arg(deploy_file("kubernetes/daemonset.yaml")),
    );
    assert!(out.status.success(), "YAML to JSON:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from the YAML")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in daemonset.yaml"))
}

#[test]
fn the_daemonset_holds_the_measured_capabilities_and_what_a_node_agent_needs() {
    let objects = objects();
    let ds = of_kind(&objects, "DaemonSet");
    let sa = of_kind(&objects, "ServiceAccount");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];

    assert_eq!(sc["privileged"], false, "not privileged: {sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().expect("capability name")))
        .collect();
    added.sort();
    assert_eq!(
        added,
        unit_capabilities(),
        "the DaemonSet must add exactly the unit's measured capabilities"
    );

    assert_eq!(spec["hostPID"], true, "owners need the node's /proc");
    assert!(
        spec["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "a toleration for every taint: {}",
        spec["tolerations"]
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "resources.{kind}.{res}: {}",
                c["resources"]
            );
        }
    }

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--metrics-addr", "0.0.0.0:9464"]),
        "{args:?}"
    );
    assert!(
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["containerPort"] == 9464),
        "{}",
        c["ports"]
    );

    assert_eq!(spec["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(ds["metadata"]["namespace"], sa["metadata"]["namespace"]);

    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    for path in ["/sys/kernel/tracing", "/sys/kernel/btf"] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"));
        assert_eq!(m["readOnly"], true, "{path} read-only: {m}");
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        assert_eq!(volume["hostPath"]["path"], path, "{volume}");
    }
}
