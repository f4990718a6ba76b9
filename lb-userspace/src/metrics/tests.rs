//! Rendering tests without I/O.

use super::*;

fn sample() -> DataplaneCounters {
    DataplaneCounters {
        vips: vec![VipCounters {
            rule: "web".into(),
            vip: "10.0.0.10:80/TCP".into(),
            packets: 7,
            bytes: 700,
            new_flows: 2,
            conn_hits: 5,
            conn_misses: 2,
        }],
        backends: vec![BackendCounters {
            service: "svc".into(),
            backend: "10.0.0.2".into(),
            packets: 4,
            bytes: 400,
            new_flows: 1,
        }],
        reasons: vec![("tx".into(), 9), ("pass_not_vip".into(), 3)],
        maglev_rebuilds: 1,
        state_unknown: false,
    }
}

#[test]
fn dataplane_counters_render() {
    let m = Metrics::new();
    m.register_dataplane(|| Ok(sample()));
    let text = m.render();
    for line in [
        "lb_dataplane_up 1",
        r#"lb_vip_packets_total{rule="web",vip="10.0.0.10:80/TCP"} 7"#,
        r#"lb_vip_conn_table_misses_total{rule="web",vip="10.0.0.10:80/TCP"} 2"#,
        r#"lb_backend_bytes_total{service="svc",backend="10.0.0.2"} 400"#,
        r#"lb_dataplane_packets_total{reason="tx"} 9"#,
        "lb_maglev_table_rebuilds_total 1",
        "lb_dataplane_state_unknown 0",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn an_unknown_dataplane_state_is_a_gauge_of_1() {
    let m = Metrics::new();
    m.register_dataplane(|| {
        Ok(DataplaneCounters {
            state_unknown: true,
            ..sample()
        })
    });
    let text = m.render();
    assert!(
        text.lines().any(|l| l == "lb_dataplane_state_unknown 1"),
        "{text}"
    );
}

#[test]
fn failing_source_reports_down() {
    let m = Metrics::new();
    m.register_dataplane(|| Err("maps not pinned".into()));
    let text = m.render();
    assert!(text.contains("lb_dataplane_up 0"), "{text}");
    assert!(!text.contains("lb_vip_packets_total{"), "{text}");
}

#[test]
fn l7_counters_render() {
    let m = Metrics::new();
    m.register_l7(|| {
        Ok(L7Counters {
            services: vec![L7ServiceCounters {
                service: "web".into(),
                requests: 3,
                retries: 1,
                responses_by_class: [0, 2, 0, 0, 1],
                latency: HistogramCounts::from_cumulative(&[0.01, 0.1], &[1, 3, 3], 0.12),
                backends: vec![L7BackendCounters {
                    backend: "b1".into(),
                    requests: 4,
                    in_flight: 0,
                    ejected: true,
                    ejections: 1,
                    responses_by_class: [0, 2, 0, 0, 1],
                }],
            }],
            in_flight: 0,
            generation: 2,
            refused: vec![("no_backend".into(), 5)],
            connections: 7,
            connections_total: 9,
            access_log_dropped: 0,
        })
    });
    let text = m.render();
    for line in [
        r#"lb_l7_requests_total{service="web"} 3"#,
        r#"lb_l7_responses_total{service="web",class="5xx"} 1"#,
        r#"lb_l7_request_duration_seconds_bucket{le="0.1",service="web"} 3"#,
        r#"lb_l7_request_duration_seconds_count{service="web"} 3"#,
        r#"lb_l7_backend_ejected{service="web",backend="b1"} 1"#,
        r#"lb_l7_backend_responses_total{service="web",backend="b1",class="2xx"} 2"#,
        r#"lb_l7_refused_requests_total{reason="no_backend"} 5"#,
        "lb_l7_client_connections 7",
        "lb_l7_client_connections_accepted_total 9",
        "lb_l7_access_log_dropped_total 0",
        "lb_l7_config_generation 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn empty_registry_renders_eof_only() {
    assert_eq!(Metrics::new().render(), "# EOF\n");
}
