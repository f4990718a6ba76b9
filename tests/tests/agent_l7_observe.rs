//! What an operator sees of L7 traffic through `lb run` (L7 only, loopback): Prometheus
//! metrics by service, backend and status class, refusals by reason, and the request log
//! (JSON lines, per-service opt-out), plus the L7 listeners in `lb status`.

#[path = "l7_agent/mod.rs"]
mod agent;
#[path = "l7_support/mod.rs"]
mod support;

use agent::{entry, get, site, LbRun};
use lb_tests::root_or_skip;
use std::time::{Duration, Instant};
use support::{backend, free_port, Behaviour};

const N: usize = 10;

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_count_every_request() {
    if !root_or_skip("agent L7 metrics and access log") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let (web, ready, down) = (free_port(), free_port(), free_port());
    let closed = free_port(); // nothing listens there
    let cfg = format!(
        "[admin]\nsocket = \"{{SOCK}}\"\nmetrics_listen = \"{{METRICS}}\"\n\n\
         [logging]\naccess_log = \"{{DIR}}/access.log\"\naccess_log_format = \"json\"\n{}{}{}",
        site(
            "web",
            web,
            &format!(
                "log_config = {{ enable = true, sample_rate = 1.0 }}\nbackends = [{}, {}]",
                entry(&a, ""),
                entry(&b, "")
            )
        ),
        site(
            "ready",
            ready,
            &format!(
                "log_config = {{ enable = false }}\nbackends = [{}]",
                entry(&a, "")
            )
        ),
        site(
            "down",
            down,
            &format!(
                "backends = [{{ name = \"gone\", address = \"127.0.0.1\", port = {closed} }}]"
            )
        ),
    );
    let lb = LbRun::start(&cfg, ready);
    let log_path = lb.dir.join("access.log");

    let (metrics, lines) = tokio::task::spawn_blocking(move || {
        // hyper answers a head over the limit itself: counted (when its connection ends,
        // so first), not logged.
        let big = "y".repeat(70 * 1024);
        assert_eq!(get(web, "/", &[("x-big", &big)]).unwrap().0, 431);
        for _ in 0..N {
            assert_eq!(get(web, "/hello?x=1", &[]).unwrap().0, 200);
        }
        assert_eq!(get(down, "/", &[]).unwrap().0, 502);
        let long = format!("/{}", "x".repeat(17 * 1024));
        assert_eq!(get(web, &long, &[]).unwrap().0, 414);
        // The writer drains its queue on its own time: wait for the lines, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Complete lines only: a long line (the 414's URL) may be read half-written.
            let done = text.rfind('\n').map_or("", |i| &text[..=i]);
            let lines: Vec<String> = done.lines().map(str::to_string).collect();
            if lines.len() >= N + 2 || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (lb.metrics(), (lines, lb))
    })
    .await
    .unwrap();
    let (lines, lb) = lines;

    for line in [
        // The 414 is refused before routing: it counts as a refusal, not for a service.
        r#"lb_l7_requests_total{service="web"} 10"#,
        r#"lb_l7_responses_total{service="web",class="2xx"} 10"#,
        r#"lb_l7_responses_total{service="web",class="4xx"} 0"#,
        r#"lb_l7_responses_total{service="down",class="5xx"} 1"#,
        r#"lb_l7_backend_responses_total{service="web",backend="a",class="2xx"} 5"#,
        r#"lb_l7_backend_responses_total{service="web",backend="b",class="2xx"} 5"#,
        r#"lb_l7_backend_responses_total{service="down",backend="gone",class="5xx"} 1"#,
        r#"lb_l7_request_duration_seconds_count{service="web"} 10"#,
        r#"lb_l7_retries_total{service="down"} 1"#,
        r#"lb_l7_refused_requests_total{reason="backend_unreachable"} 1"#,
        r#"lb_l7_refused_requests_total{reason="uri_too_long"} 1"#,
        r#"lb_l7_refused_requests_total{reason="headers_too_large"} 1"#,
        r#"lb_l7_refused_requests_total{reason="no_backend"} 0"#,
        r#"lb_l7_backend_ejected{service="web",backend="a"} 0"#,
        "lb_l7_in_flight_requests 0",
    ] {
        assert!(has_line(&metrics, line), "missing {line:?} in\n{metrics}");
    }
    assert!(
        metrics.contains("lb_l7_client_connections_accepted_total "),
        "{metrics}"
    );

    // The log: N lines of web, the 502 of down (with its retry), the 414; none of `ready`.
    assert_eq!(lines.len(), N + 2, "{lines:#?}\nagent log:\n{}", lb.log());
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let web_ok: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["backend_service"] == "web" && e["status"] == 200)
        .collect();
    assert_eq!(web_ok.len(), N, "{entries:#?}");
    for e in &web_ok {
        assert_eq!(e["request_method"], "GET");
        assert_eq!(e["request_url"], "/hello?x=1");
        assert_eq!(e["host"], "test.example");
        assert_eq!(e["protocol"], "HTTP/1.1");
        assert_eq!(e["remote_ip"], "127.0.0.1");
        assert_eq!(e["attempts"], 1);
        assert_eq!(e["response_size"], 1, "the body is the backend's name");
        assert_eq!(e["user_agent"], "lb-test");
        assert!(e["latency_sec"].as_f64().unwrap() > 0.0);
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
    let backends: Vec<&str> = web_ok
        .iter()
        .map(|e| e["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends.iter().filter(|b| **b == "a").count(), N / 2);
    let failed = entries
        .iter()
        .find(|e| e["backend_service"] == "down")
        .expect("the 502 is logged");
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["attempts"], 2, "one entry for the retried request");
    assert_eq!(failed["status_details"], "backend_unreachable");
    let long = entries
        .iter()
        .find(|e| e["status"] == 414)
        .expect("the 414 is logged");
    assert_eq!(long["status_details"], "uri_too_long");
    assert!(long["backend_service"].is_null());

    // `lb status` lists the L7 listeners with what is bound.
    let out = lb.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let want = format!("L7 listener 127.0.0.1:{web} (HTTP) -> web, bound 127.0.0.1:{web}");
    assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    let out = lb.cli(&["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    let listeners = v["l7_listeners"].as_array().expect("l7_listeners");
    assert_eq!(listeners.len(), 3, "{v}");
    assert!(listeners
        .iter()
        .all(|l| l["tls"] == false && l["bound"] == l["address"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_follows_a_reload() {
    if !root_or_skip("agent L7 access log reload") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let web = free_port();
    let svc = format!("backends = [{}]", entry(&a, ""));
    let off = format!("[admin]\nsocket = \"{{SOCK}}\"\n{}", site("web", web, &svc));
    let lb = LbRun::start(&off, web);
    let cfg_path = lb.dir.join("lb.toml");
    let log_path = lb.dir.join("text.log");
    let on = std::fs::read_to_string(&cfg_path).unwrap().replace(
        "[admin]",
        &format!(
            "[logging]\naccess_log = \"{}\"\naccess_log_format = \"text\"\n\n[admin]",
            log_path.display()
        ),
    );
    let lines = tokio::task::spawn_blocking(move || {
        assert_eq!(get(web, "/before", &[]).unwrap().0, 200);
        std::fs::write(&cfg_path, on).unwrap();
        let out = lb.cli(&["reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The agent answers the reload before the L7 tier has swapped (today), so send
        // until three lines are there, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(get(web, "/after", &[]).unwrap().0, 200);
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.lines().count() >= 3 || Instant::now() > deadline {
                break (text, lb);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let (text, lb) = lines;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}\nagent log:\n{}", lb.log());
    for l in lines {
        assert!(
            l.contains(" 127.0.0.1 GET \"/after\" HTTP/1.1 200 test.example ")
                && l.contains("service=web backend=a attempts=1"),
            "{l}"
        );
    }
}
