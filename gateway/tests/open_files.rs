//! The gateway binary under a low open-files limit: it lowers
//! `limits.max_connections` to what fits, says so, and refuses the
//! connections beyond it with HTTP 503 (instead of failing accepts); and
//! while an attacker holds more idle sockets than it may open files, logins
//! and HTTP publishes still succeed (security review, finding 1).

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

/// The gateway binary under an open-files limit of `files` (util-linux's
/// prlimit, part of every Debian, sets the soft and hard limit), on its own
/// ports, with only the environment given.
fn prlimit_gateway(files: u64, port: u16, admin: u16, args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Gateway {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={files}:{files}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_telegraphy-gateway"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    Gateway(cmd.spawn().expect("start telegraphy-gateway"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_files_limit_lowers_max_connections_and_refuses_cleanly() {
    let (port, admin) = (free_port(), free_port());
    // max_connections asked for explicitly (the default is fitted quietly: see below).
    let mut gw = prlimit_gateway(FILES, port, admin, &["--allow-anonymous"], &[("TELEGRAPHY_LIMITS__MAX_CONNECTIONS", "50000")], Stdio::piped());
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

    // ROOM established sessions; the next connection is refused with 503,
    // not dropped. (Connections that have not authenticated would be shed
    // to make room instead: see the next test.)
    let url = format!("ws://127.0.0.1:{port}/ws");
    let request = || {
        let mut r = url.as_str().into_client_request().unwrap();
        r.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("wamp.2.json"));
        r
    };
    let mut open = Vec::with_capacity(ROOM);
    for i in 0..ROOM {
        let (mut ws, _) = tokio_tungstenite::connect_async(request()).await.unwrap_or_else(|e| panic!("connection {i} of {ROOM}: {e}"));
        join(&mut ws, None).await;
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

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// HELLO (anonymous, or with a ticket) until WELCOME; panics otherwise.
async fn join(ws: &mut Ws, ticket: Option<&str>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let methods = if ticket.is_some() { r#"["ticket"]"# } else { r#"["anonymous"]"# };
    let hello = format!(r#"[1,"realm1",{{"roles":{{"subscriber":{{}}}},"authmethods":{methods}}}]"#);
    ws.send(Message::Text(hello.into())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer to HELLO").expect("open").unwrap();
        let Message::Text(text) = frame else { continue };
        let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
        match msg[0].as_u64() {
            Some(2) => return,
            Some(4) => {
                let auth = format!(r#"[5,"{}",{{}}]"#, ticket.expect("a ticket was asked for"));
                ws.send(Message::Text(auth.into())).await.unwrap();
            }
            _ => panic!("expected WELCOME, got {text}"),
        }
    }
}

/// The process's open-files limit in the attacker test.
const ATTACK_FILES: u64 = 400;
/// Idle sockets the attacker holds: more than the gateway may open.
const ATTACK_SOCKETS: usize = 420;
const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// Before the admission layer, 420 idle sockets against a 400-file limit
/// made every accept fail (`Too many open files`) and logins time out
/// until the attacker let go. Now they are shed oldest first, or refused
/// per address; either way logins and HTTP publishes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_succeed_while_an_attacker_holds_idle_sockets() {
    use tokio::io::AsyncWriteExt;
    // With the default per-address cap (the attacker's address runs out of
    // untrusted slots), and with no cap (the node sheds the oldest).
    for per_ip in ["256", "0"] {
        let (port, admin) = (free_port(), free_port());
        let env = [("TELEGRAPHY_JWT_SECRET", SECRET), ("TELEGRAPHY_LIMITS__MAX_UNAUTHENTICATED_PER_IP", per_ip)];
        let _gw = prlimit_gateway(ATTACK_FILES, port, admin, &["--api-keys", "attack-test-key"], &env, Stdio::null());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("http://127.0.0.1:{admin}/readyz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The attacker, from its own address: idle sockets, and publish
        // requests that announce a body and never send it.
        let mut attacker = Vec::with_capacity(ATTACK_SOCKETS);
        for i in 0..ATTACK_SOCKETS {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut s = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
            if i % 20 == 0 {
                let _ = s.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").await;
            }
            attacker.push(s);
        }
        // A browser logs in with a ticket...
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let ticket = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("wamp.2.json"));
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("per_ip={per_ip}: the login's connection timed out"))
            .unwrap();
        join(&mut ws, Some(&ticket)).await;
        // ...and the web-app publishes over HTTP.
        let resp = http
            .post(format!("http://127.0.0.1:{port}/publish"))
            .bearer_auth("attack-test-key")
            .json(&serde_json::json!({"topic": "a.b"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("per_ip={per_ip}: HTTP publish failed: {e}"));
        assert_eq!(resp.status(), 200, "per_ip={per_ip}");
        let metrics = http.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
        let shed = value("telegraphy_connections_shed_total ");
        let refused = value("telegraphy_connections_refused_total{reason=\"unauthenticated_per_ip\"} ");
        if per_ip == "0" {
            assert!(shed >= 1.0, "the oldest idle sockets were shed:\n{metrics}");
        } else {
            assert!(refused >= 1.0, "the attacker's address ran out of untrusted slots:\n{metrics}");
        }
        drop(attacker);
    }
}

/// With the default `limits.max_connections`, a low open-files limit is
/// not worth a warning at every start (every development machine has one):
/// the limit is fitted quietly and the startup line shows it.
#[test]
fn the_default_limit_is_fitted_quietly() {
    let (port, admin) = (free_port(), free_port());
    let mut gw = prlimit_gateway(FILES, port, admin, &["--allow-anonymous"], &[], Stdio::piped());
    let stdout = gw.0.stdout.take().unwrap();
    let mut before = Vec::new();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let listening = loop {
        let line = lines.next().expect("the gateway logs its startup");
        if line.contains("gateway listening") {
            break line;
        }
        before.push(line);
    };
    assert!(listening.contains(&format!("max_connections={ROOM}")), "{listening}");
    assert!(!before.iter().any(|l| l.contains("may open only")), "{before:?}");
}
