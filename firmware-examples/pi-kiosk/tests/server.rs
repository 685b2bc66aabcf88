//! The kiosk server as a client sees it: the `edgelm-kiosk` binary over a
//! synthetic base and recipe pack, spoken to with plain HTTP/1.1 on a socket.
//! Streams run and end, a full pool answers 503 with Retry-After, bad input
//! gets a 4xx with a JSON message, and a client that leaves frees its session.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};
use serde_json::Value;

/// Writes the synthetic base and recipe pack into `dir`.
fn write_models(dir: &Path) {
    let spec = SyntheticSpec::tiny(DType::Q8);
    std::fs::write(dir.join("base.edgelm"), synthetic_model(&spec).unwrap()).unwrap();
    let pack = SyntheticPackSpec::recipe(DType::Q8);
    std::fs::write(dir.join("recipe.edgelm"), synthetic_pack(&spec, &pack).unwrap()).unwrap();
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server on a free port with `args` after `--models`.
    fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        write_models(dir.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgelm-kiosk"))
            .arg("--models")
            .arg(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port, _dir: dir }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Sends `raw` and reads the whole response (the server closes after it).
    fn raw(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        Response::parse(&bytes)
    }

    fn post(&self, path: &str, body: &str) -> Response {
        self.raw(post_request(path, body).as_bytes())
    }

    fn get(&self, path: &str) -> Response {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: kiosk\r\nConnection: close\r\n\r\n").as_bytes())
    }

    fn health(&self) -> Value {
        self.get("/healthz").json()
    }

    /// Polls `/healthz` until `busy` is 0; false after `limit`.
    fn wait_idle(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.health()["busy"] == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post_request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: kiosk\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn parse(bytes: &[u8]) -> Response {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        let head = head.to_ascii_lowercase();
        let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
        Response { status, head, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.head.lines().find_map(|l| l.strip_prefix(&prefix))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// `(event, data)` pairs of a text/event-stream body.
    fn events(&self) -> Vec<(String, Value)> {
        self.body
            .split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|block| {
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                (name, serde_json::from_str(&data).unwrap())
            })
            .collect()
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Reads from `s` until `needle` has arrived.
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before {needle:?}: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn streams_run_and_end_for_each_domain() {
    let server = Server::start(&["--pace-ms", "0"]);
    for (domain, prompt) in [("story", "Once"), ("recipe", "")] {
        let r = server
            .post("/api/generate", &format!(r#"{{"domain":"{domain}","prompt":"{prompt}","max_tokens":24,"seed":3}}"#));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let events = r.events();
        let (first, last) = (&events[0], events.last().unwrap());
        assert_eq!(first.0, "prompt");
        // an empty box means the domain's default prompt
        assert_eq!(first.1, if prompt.is_empty() { "Title:" } else { prompt });
        assert_eq!(last.0, "done", "{events:?}");
        let pieces = events.iter().filter(|(n, _)| n == "piece").count();
        assert_eq!(last.1["pieces"], pieces);
        let reason = last.1["reason"].as_str().unwrap();
        assert!(["MaxTokens", "EndOfText", "ContextFull"].contains(&reason), "{reason}");
        if reason == "MaxTokens" {
            assert!(pieces > 0);
        }
    }
    let h = server.health();
    assert_eq!((h["completed"].as_u64(), h["busy"].as_u64()), (Some(2), Some(0)));
    // same seed, same text
    let body = r#"{"domain":"story","prompt":"Once","max_tokens":24,"seed":3}"#;
    let text =
        |r: Response| -> Vec<Value> { r.events().into_iter().filter(|(n, _)| n == "piece").map(|e| e.1).collect() };
    let first = text(server.post("/api/generate", body));
    assert!(!first.is_empty());
    assert_eq!(first, text(server.post("/api/generate", body)));
}

#[test]
fn a_full_pool_answers_503_and_recovers() {
    let server = Server::start(&["--sessions", "1", "--pace-ms", "150"]);
    let mut first = server.connect();
    first.write_all(post_request("/api/generate", r#"{"domain":"story","max_tokens":6}"#).as_bytes()).unwrap();
    read_until(&mut first, "event: prompt");
    let busy = server.post("/api/generate", r#"{"domain":"recipe"}"#);
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after"), Some("2"));
    assert!(busy.json()["error"].as_str().unwrap().contains("busy"));
    // the accepted request still completes
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("event: done"));
    assert!(server.wait_idle(Duration::from_secs(5)));
    assert_eq!(server.post("/api/generate", r#"{"domain":"recipe","max_tokens":2}"#).status, 200);
    assert_eq!(server.health()["rejected_busy"], 1);
}

#[test]
fn a_client_that_leaves_stops_its_generation_and_frees_the_slot() {
    // 90 tokens at 100 ms would hold the only session for 9 s
    let server = Server::start(&["--sessions", "1", "--pace-ms", "100"]);
    let mut s = server.connect();
    s.write_all(post_request("/api/generate", r#"{"domain":"story","max_tokens":90,"seed":5}"#).as_bytes()).unwrap();
    read_until(&mut s, "event: piece");
    assert_eq!(server.health()["busy"], 1);
    drop(s);
    assert!(server.wait_idle(Duration::from_secs(3)), "the session was not freed after the client left");
    let h = server.health();
    assert_eq!((h["stopped_by_client"].as_u64(), h["completed"].as_u64()), (Some(1), Some(0)));
    assert_eq!(server.post("/api/generate", r#"{"domain":"story","max_tokens":1}"#).status, 200);
}

#[test]
fn bad_input_gets_a_4xx_with_a_message() {
    let server = Server::start(&["--max-prompt-bytes", "64", "--context", "16"]);
    let long = "a".repeat(65);
    let cases = [
        (r#"{"domain":"poems"}"#.to_string(), 404, "unknown domain"),
        (r#"{"domain":"story","temperature":-1}"#.into(), 400, "temperature"),
        (r#"{"domain":"story","top_p":1.5}"#.into(), 400, "top-p"),
        (r#"{"domain":"story","max_tokens":0}"#.into(), 400, "max_tokens"),
        (r#"{"domain":"story","max_tokens":"many"}"#.into(), 400, "bad request"),
        (r#"{"prompt":"no domain"}"#.into(), 400, "domain"),
        ("{not json".into(), 400, "bad request"),
        (format!(r#"{{"domain":"story","prompt":"{long}"}}"#), 413, "64"),
        (format!(r#"{{"domain":"story","prompt":"{}"}}"#, "a".repeat(100_000)), 413, "too large"),
    ];
    for (body, status, needle) in cases {
        let r = server.post("/api/generate", &body);
        assert_eq!(r.status, status, "{body:.80}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    // a prompt within the byte limit but longer than the context (16 tokens;
    // the synthetic tokenizer is byte-level, so 40 bytes are about 40 tokens)
    let r = server.post("/api/generate", &format!(r#"{{"domain":"story","prompt":"{}"}}"#, "ab ".repeat(13)));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("tokens"), "{}", r.body);
    // malformed HTTP gets a clean 400, and the server lives on
    let r = server.raw(b"HELLO THERE\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = server.raw(b"GET /api/generate HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(server.get("/nowhere").status, 404);
    // nothing refused ever held a session or started generating
    let h = server.health();
    assert_eq!((h["busy"].as_u64(), h["started"].as_u64()), (Some(0), Some(0)));
}

#[test]
fn page_domains_and_health() {
    let server = Server::start(&[]);
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Tell me a story") && page.body.contains("Give me a recipe"));
    let d = server.get("/api/domains").json();
    let names: Vec<_> = d["domains"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["story", "recipe"]);
    let h = server.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["sessions"], 2);
    // the arena the model asks for at its full context (96 tokens)
    assert!(h["arena_bytes"].as_u64().unwrap() > 0);
    assert_eq!((&h["context"], &h["kv"]), (&serde_json::json!(96), &serde_json::json!("f32")));

    // a q8 KV cache: smaller arenas, and stories still stream to their end
    let q8 = Server::start(&["--kv", "q8", "--pace-ms", "0"]);
    let hq = q8.health();
    assert_eq!(hq["kv"], "q8");
    assert!(hq["arena_bytes"].as_u64().unwrap() < h["arena_bytes"].as_u64().unwrap(), "{hq} vs {h}");
    let r = q8.post("/api/generate", r#"{"domain":"story","prompt":"Once","max_tokens":24,"seed":3}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.events().last().unwrap().0, "done");
}

#[test]
fn settings_file_with_flags_over_it() {
    let dir = tempfile::tempdir().unwrap();
    write_models(dir.path());
    let config = dir.path().join("kiosk.toml");
    // port 1 is not ours to bind: the flag must win
    std::fs::write(&config, "models = \".\"\nbind = \"127.0.0.1:1\"\nsessions = 3\ncontext = 48\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelm-kiosk"))
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1:0", "--sessions", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let server = Server { child, port, _dir: dir };
    let h = server.health();
    assert_eq!((h["sessions"].as_u64(), h["context"].as_u64()), (Some(4), Some(48)));

    // an unknown key and an impossible value stop the server with a message
    for (text, needle) in [("sessionz = 2\n", "sessionz"), ("sessions = 0\n", "sessions")] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_edgelm-kiosk")).arg("--config").arg(&config).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
}
