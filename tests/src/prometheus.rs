//! Debian's real `prometheus` as a guard: a child process with its own config and storage in a
//! temporary directory, listening on loopback, scraping one target every second. Killed by pid
//! and its directory removed on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;

/// How long Prometheus may take to open its storage and report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    reaped: bool,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (job `rst-trace`) every second and waits (bounded)
    /// until it answers /-/ready. Panics with its log when it cannot.
    pub fn start(target: SocketAddr) -> Prometheus {
        let bin = "prometheus";
        let dir = std::env::temp_dir().join(format!(
            "rsttest-prometheus-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("creating Prometheus's directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rst-trace\n    static_configs:\n      - targets: ['{target}']\n"
        );
        fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
        let port = http::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = fs::File::create(dir.join("prometheus.log")).expect("creating the log");
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}): install Debian's prometheus package \
                 (cargo xtask setup does) — this test must not be skipped"
            )
        });
        let mut p = Prometheus {
            child,
            dir,
            addr,
            reaped: false,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.reaped = true;
                panic!(
                    "prometheus exited ({status}) before ready; log:\n{}",
                    p.log()
                );
            }
            if http::get(addr, "/-/ready", None).is_ok_and(|r| r.status == 200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {READY_TIMEOUT:?}; log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET /api/v1/<path> and its JSON, or why not.
    pub fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let r = http::get(self.addr, &format!("/api/v1/{path_and_query}"), None)?;
        let v: Value = serde_json::from_str(&r.body)
            .map_err(|e| format!("status {}, not JSON ({e}): {}", r.status, r.body))?;
        if v["status"] != "success" {
            return Err(format!("status {}: {v}", r.status));
        }
        Ok(v)
    }

    /// An instant query's vector result: (labels, value) per series.
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let v = self.api(&format!("query?query={}", http::encode_query(promql)))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no vector result: {v}"))?;
        result
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .ok_or_else(|| format!("bad sample {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if !self.reaped {
            // Our own child, by pid, not yet reaped: no pid-reuse risk.
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
