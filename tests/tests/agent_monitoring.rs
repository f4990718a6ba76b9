//! The Grafana dashboard and the Prometheus alerting rules in `packaging/monitoring/` only
//! name metrics that a running agent (`lb run` with the L4 tier, health checks and metrics)
//! exports, and the rules pass `promtool check rules` where promtool is installed.

mod agent_support;

use agent_support::*;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use std::{collections::BTreeSet, path::PathBuf, time::Duration};

const METRICS_PORT: u16 = 9193;

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

/// Every `lb_*` metric name in a text (PromQL inside YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("lb_") {
        let start = i + off;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Whether the exposition declares the family of a PromQL series name.
fn exported(scrape: &str, name: &str) -> bool {
    let mut bases = vec![name];
    for suffix in ["_total", "_bucket", "_count", "_sum"] {
        if let Some(b) = name.strip_suffix(suffix) {
            bases.push(b);
        }
    }
    bases.iter().any(|b| {
        scrape
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {b} ")))
    })
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let alerts = std::fs::read_to_string(monitoring().join("lb-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(monitoring().join("lb-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut names = metric_names(&alerts);
    names.extend(metric_names(&dashboard));
    assert!(names.len() >= 15, "{names:?}");

    if let Some(promtool) = which("promtool") {
        let o = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(monitoring().join("lb-alerts.yml"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    } else {
        // scripts/bootstrap.sh installs it (Debian `prometheus`), so `cargo xtask test` checks.
        assert!(
            std::env::var_os("LB_REQUIRE_ROOT").is_none(),
            "promtool missing: scripts/bootstrap.sh installs it (Debian prometheus)"
        );
        eprintln!("promtool not installed: rule syntax not checked");
    }

    if !root_or_skip("agent monitoring") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        metrics_port: Some(METRICS_PORT),
        check: Some((0.5, 2, 2)),
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    let text = lb_tests::lbrun::wait_for(Duration::from_secs(10), || {
        let s = scrape(&t, METRICS_PORT);
        anyhow::ensure!(s.contains("lb_health_backend_up{"), "no health yet");
        Ok(s)
    })
    .unwrap();
    let missing: Vec<&String> = names.iter().filter(|n| !exported(&text, n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|f| f.is_file())
}
