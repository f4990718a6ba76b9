//! The metrics endpoint on 127.0.0.1:0, scraped with a raw hyper client.

mod health_support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lb_userspace::{
    health::{Health, HealthChecker},
    metrics::{self, BackendCounters, DataplaneCounters, Metrics, VipCounters},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "metrics")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_health_and_dataplane_metrics() {
    let up = health_support::start(
        "127.0.0.1:0".parse().unwrap(),
        health_support::Mode::Http,
        health_support::routes(),
    )
    .await;
    let text = format!(
        r#"
        admin.metrics_listen = "127.0.0.1:0"
        [health_checks.hc]
        protocol = "HTTP"
        request_path = "/healthz"
        port = {}
        check_interval_sec = 0.2
        timeout_sec = 0.2
        healthy_threshold = 1
        unhealthy_threshold = 1
        [backend_services.web]
        protocol = "HTTP"
        health_check = "hc"
        backends = [{{ name = "up", address = "127.0.0.1", port = 1 }}]
        "#,
        up.addr.port()
    );
    let cfg = lb_userspace::model::parse(&text).unwrap().config().clone();
    let checker = HealthChecker::start(&cfg);
    let mut rx = checker.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.get("web", "up") == Some(Health::Healthy)),
    )
    .await
    .unwrap()
    .unwrap();

    let m = Arc::new(Metrics::new());
    m.register_health(checker.reader());
    m.register_dataplane(|| {
        Ok(DataplaneCounters {
            vips: vec![VipCounters {
                rule: "fr".into(),
                vip: "10.1.0.1:80/TCP".into(),
                packets: 10,
                bytes: 1000,
                new_flows: 3,
                conn_hits: 7,
                conn_misses: 3,
            }],
            backends: vec![BackendCounters {
                service: "l4".into(),
                backend: "10.1.0.2".into(),
                packets: 10,
                bytes: 1000,
                new_flows: 3,
            }],
            reasons: vec![("tx".into(), 10)],
            maglev_rebuilds: 2,
            state_unknown: false,
        })
    });
    let server = metrics::serve_from_config(&cfg, m.clone())
        .await
        .unwrap()
        .expect("metrics_listen set");
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"lb_health_backend_state{service="web",backend="up",state="healthy"} 1"#,
        r#"lb_health_backend_state{service="web",backend="up",state="unhealthy"} 0"#,
        r#"lb_health_backend_up{service="web",backend="up"} 1"#,
        r#"lb_vip_packets_total{rule="fr",vip="10.1.0.1:80/TCP"} 10"#,
        r#"lb_backend_new_flows_total{service="l4",backend="10.1.0.2"} 3"#,
        r#"lb_dataplane_packets_total{reason="tx"} 10"#,
        "lb_maglev_table_rebuilds_total 2",
        "# TYPE lb_health_probe_duration_seconds histogram",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    let probes = body
        .lines()
        .find(|l| {
            l.starts_with(r#"lb_health_probes_total{service="web",backend="up",result="success"}"#)
        })
        .unwrap_or_else(|| panic!("no probe counter in\n{body}"));
    assert!(probes.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(
        body.contains(
            r#"lb_health_probe_duration_seconds_bucket{le="+Inf",service="web",backend="up"}"#
        ) || body.contains(
            r#"lb_health_probe_duration_seconds_bucket{service="web",backend="up",le="+Inf"}"#
        ),
        "{body}"
    );

    let (status, _) = get(addr, "/other").await;
    assert_eq!(status, 404);
    drop(server);
    // The accept task ends asynchronously after the drop: allow it a bounded moment.
    let mut stopped = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped, "server stopped on drop");
}
