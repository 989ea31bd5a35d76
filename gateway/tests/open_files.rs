//! The gateway binary under a low open-files limit: it lowers
//! `limits.max_connections` to what fits, says so, and refuses the
//! connections beyond it with HTTP 503 (instead of failing accepts).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The hard open-files limit the gateway runs under in this test.
const FILES: u64 = 300;
/// What is left for WebSockets: the gateway keeps 64 + 1% for itself.
const ROOM: usize = (FILES - 64 - FILES / 100) as usize;

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_files_limit_lowers_max_connections_and_refuses_cleanly() {
    let (port, admin) = (free_port(), free_port());
    // util-linux's prlimit (part of every Debian) runs the gateway with a
    // soft and hard limit of FILES.
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={FILES}:{FILES}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_telegraphy-gateway"))
        .args(["--allow-anonymous", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut gw = Gateway(cmd.spawn().expect("start telegraphy-gateway"));
    let stdout = gw.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The warning names the limit, the effective maximum and what to raise.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut logged = Vec::new();
    let warning = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the gateway logs at startup");
        if line.contains("may open only") {
            break line;
        }
        logged.push(line);
    };
    assert!(warning.contains(&format!("may open only {FILES} files")), "{warning}");
    assert!(warning.contains(&format!("at most {ROOM} WebSockets")), "{warning}");
    assert!(warning.contains("ulimit -Hn"), "{warning}");

    let http = reqwest::Client::new();
    let metrics = loop {
        match http.get(format!("http://127.0.0.1:{admin}/metrics")).send().await {
            Ok(r) => break r.text().await.unwrap(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("admin listener: {e}"),
        }
    };
    assert!(metrics.lines().any(|l| l == format!("telegraphy_max_connections {ROOM}")), "gauge missing or wrong:\n{metrics}");

    // ROOM WebSockets open; the next one is refused with 503, not dropped.
    let url = format!("ws://127.0.0.1:{port}/ws");
    let request = || {
        let mut r = url.as_str().into_client_request().unwrap();
        r.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("wamp.2.json"));
        r
    };
    let mut open = Vec::with_capacity(ROOM);
    for i in 0..ROOM {
        let (ws, _) = tokio_tungstenite::connect_async(request()).await.unwrap_or_else(|e| panic!("connection {i} of {ROOM}: {e}"));
        open.push(ws);
    }
    match tokio_tungstenite::connect_async(request()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("connection {} should get HTTP 503, got {:?}", ROOM + 1, other.map(|(_, r)| r.status())),
    }
    // And once one closes, there is room again.
    drop(open.pop());
    let reopened = async {
        loop {
            if tokio_tungstenite::connect_async(request()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reopened).await.expect("a freed slot is reused");
}
