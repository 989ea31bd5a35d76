//! Keeps the benchmark harness working: every scenario, tiny and short,
//! against real routers (the gateway binary, the ceiling program), over
//! real sockets. No timing assertions: only that each run completes, loses
//! nothing and writes its JSON line.
//!
//! The cluster scenarios need Redis and RabbitMQ on 127.0.0.1 (as the rest
//! of the suite; `scripts/services.sh` starts them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_telegraphy-bench"));
    exe.parent().expect("target dir").to_path_buf()
}

/// The gateway and CLI binaries live next to the bench binary; build them
/// if this test runs alone (`cargo test -p telegraphy-bench`).
fn ensure_binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_dir();
        if dir.join("telegraphy-gateway").exists() && dir.join("telegraphy-publish").exists() && std::env::var("CARGO").is_err() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "telegraphy-gateway", "-p", "telegraphy-publish", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).status().expect("cargo runs");
        assert!(status.success(), "building the gateway and CLI binaries failed");
    });
}

/// Runs the bench with `args` plus `--json FILE`; returns the JSON lines.
fn bench(args: &[&str]) -> Vec<serde_json::Value> {
    ensure_binaries();
    let json = std::env::temp_dir().join(format!("telegraphy-bench-smoke-{:x}.jsonl", fastrand::u64(..)));
    let out = Command::new(env!("CARGO_BIN_EXE_telegraphy-bench")).args(args).arg("--json").arg(&json).output().expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "telegraphy-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&json).expect("a JSON line was written");
    let _ = std::fs::remove_file(&json);
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("valid JSON line")).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["machine"]["nproc"].as_u64().unwrap_or(0) >= 1, "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
    }
    lines
}

fn assert_delivered(l: &serde_json::Value) {
    let r = &l["result"];
    let expected = r["expected"].as_u64().unwrap();
    assert!(expected > 0, "nothing was expected: {l}");
    assert_eq!(r["delivered"].as_u64(), Some(expected), "losses: {l}");
    assert_eq!(r["lost"].as_u64(), Some(0), "{l}");
    assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "no latency samples: {l}");
    assert!(r["latency_us"]["p99"].as_u64().unwrap() >= r["latency_us"]["p50"].as_u64().unwrap(), "{l}");
    assert!(l["router"]["rss_peak_kib"].as_u64().unwrap() > 0, "no RSS sample: {l}");
}

const SHORT: &[&str] = &["--duration", "1", "--warmup", "0"];

#[test]
fn fanout_over_wamp_json() {
    let l = bench(&[&["fanout", "-n", "8"], SHORT].concat());
    assert_eq!(l[0]["scenario"], "fanout");
    assert_eq!(l[0]["label"], "telegraphy");
    assert_eq!(l[0]["serializer"], "json");
    assert_delivered(&l[0]);
}

#[test]
fn fanout_over_http_with_msgpack_at_a_rate() {
    let l = bench(&[&["fanout", "-n", "4", "--publish", "http", "--serializer", "msgpack", "--rate", "200"], SHORT].concat());
    assert_eq!(l[0]["publish"], "http");
    assert_eq!(l[0]["serializer"], "msgpack");
    assert_delivered(&l[0]);
}

#[test]
fn fanout_through_the_cli_with_jwt_sessions() {
    let l = bench(&[&["fanout", "-n", "4", "--publish", "cli", "--rate", "200", "--auth", "jwt"], SHORT].concat());
    assert_eq!(l[0]["auth"], "jwt");
    assert_delivered(&l[0]);
}

#[test]
fn ceiling() {
    let l = bench(&[&["ceiling", "-n", "8", "--runs", "2"], SHORT].concat());
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["label"], "ceiling");
    assert_delivered(&l[0]);
    assert_delivered(&l[1]);
}

#[test]
fn many_topics() {
    let l = bench(&[&["many-topics", "-n", "12"], SHORT].concat());
    assert_eq!(l[0]["topics"], 12);
    assert_delivered(&l[0]);
}

#[test]
fn connect_storm() {
    let l = bench(&["connect-storm", "-n", "30", "--auth", "jwt", "--subscribe", "--source-ips", "2"]);
    let r = &l[0]["result"];
    assert_eq!(r["opened"], 30, "{}", l[0]);
    assert_eq!(r["failures"], 0);
    assert!(r["sessions_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn idle_authenticated_sessions() {
    let l = bench(&["idle", "-n", "20", "--settle", "0.2"]);
    let r = &l[0]["result"];
    assert_eq!(l[0]["auth"], "jwt");
    assert_eq!(r["opened"], 20, "{}", l[0]);
    assert_eq!(r["dropped"], 0);
    assert!(r["rss_all_kib"].as_u64().unwrap() > 0);
}

#[test]
fn cluster_on_redis() {
    let l = bench(
        &[&["cluster", "-n", "6", "--nodes", "2", "--bus", "redis", "--rate", "100", "--namespace", "telegraphy-bench-smoke-redis"], SHORT].concat(),
    );
    assert_eq!(l[0]["nodes"], 2);
    assert_eq!(l[0]["publish"], "redis");
    assert_delivered(&l[0]);
}

#[test]
fn cluster_on_rabbitmq() {
    let l = bench(
        &[&["cluster", "-n", "6", "--nodes", "2", "--bus", "amqp", "--rate", "100", "--namespace", "telegraphy-bench-smoke-amqp"], SHORT].concat(),
    );
    assert_eq!(l[0]["publish"], "amqp");
    assert_delivered(&l[0]);
}

#[test]
fn scale_with_a_restart_of_every_node() {
    let l = bench(&[
        "scale",
        "-n",
        "60",
        "--nodes",
        "2",
        "--workers",
        "2",
        "--topics",
        "6",
        "--rate",
        "50",
        "--duration",
        "1",
        "--after-restart",
        "1",
        "--warmup",
        "0",
        "--jitter",
        "0.5",
        "--namespace",
        "telegraphy-bench-smoke-scale",
    ]);
    let r = &l[0]["result"];
    assert_eq!(l[0]["sessions"], 60, "{}", l[0]);
    assert_eq!(r["sessions_per_node"], serde_json::json!([30.0, 30.0]), "{}", l[0]);
    for phase in ["steady", "after_restart"] {
        let p = &r[phase];
        assert_eq!(p["expected"], 50 * 10, "{phase}: {}", l[0]);
        assert_eq!(p["lost"], 0, "{phase}: {}", l[0]);
        assert_eq!(p["received"], p["expected"], "{phase}: {}", l[0]);
    }
    assert!(r["restart"]["all_back_s"].as_f64().unwrap() > 0.0, "{}", l[0]);
    assert_eq!(r["restart"]["over_limit_nodes"], serde_json::json!([]), "{}", l[0]);
}

#[test]
fn bus_ceiling_on_redis_and_rabbitmq() {
    for bus in ["redis", "amqp"] {
        let l = bench(&[&["bus-ceiling", "-n", "50", "--bus", bus, "--namespace", "telegraphy-bench-smoke-bare"], SHORT].concat());
        assert_eq!(l[0]["label"], "broker");
        assert_eq!(l[0]["topics"], 50);
        let r = &l[0]["result"];
        assert!(r["expected"].as_u64().unwrap() > 0, "{}", l[0]);
        assert_eq!(r["delivered"], r["expected"], "{}", l[0]);
        assert_eq!(r["lost"], 0, "{}", l[0]);
        assert!(r["latency_us"]["count"].as_u64().unwrap() > 0, "no latency samples: {}", l[0]);
    }
}
