//! Google Cloud's internal TCP/UDP load balancer lab (GSP041), reproduced: three backends
//! answer `GET /<n>` with True/False, an HTTP health check `GET /2` expecting "True" guards
//! them, a VIP on TCP port 80 fronts them, and a frontend renders a 10x10 table of primes by
//! asking the VIP, 10 requests in parallel. A fourth backend is broken (it answers False to
//! every number, `/2` included): the health check must take it out of rotation, or the
//! table would show primes in red.

mod agent_support;

use agent_support::{lb_ok, until_maps, Maps};
use anyhow::Result;
use lb_common::backend_flags;
use lb_tests::{
    lbrun::{agent_sections, wait_for, Agent},
    netns::Topology,
    root_or_skip,
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// The backend that answers False to everything.
const BROKEN: usize = 3;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab");

/// A minimal HTTP/1.1 GET over a fresh connection: (status, headers+body text).
fn http_get(to: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok((status, out))
}

#[test]
fn the_prime_number_lab_works_through_the_vip() {
    if !root_or_skip("GSP041 lab") {
        return;
    }
    let t = Topology::new(4).expect("topology");
    let backend = format!("{LAB}/primes_backend.py");
    let _backends: Vec<_> = (0..4)
        .map(|i| {
            let name = format!("primes-{i}");
            let mut args = vec!["python3", &backend, &name, "80"];
            if i == BROKEN {
                args.push("broken");
            }
            t.backends[i].spawn(&args).unwrap()
        })
        .collect();
    // A small Maglev ring, so the test can read the tables (agent_support::RING).
    let mut cfg = agent_sections(&t).replace(
        "max_services = 4\n",
        &format!("max_services = 4\nring_size = {}\n", agent_support::RING),
    );
    cfg += &lb_tests::lbrun::gsp041_sections(&t, 4);
    let agent = Agent::start(&t.balancer, &cfg).unwrap();
    // The broken backend leaves rotation once its check fails twice (interval 1 s); the
    // three good ones stay. Read from the pinned maps, with a deadline.
    let good: Vec<_> = (0..3).map(|i| t.backend_ip(i)).collect();
    let broken = t.backend_ip(BROKEN);
    until_maps(&agent.pin_dir, Duration::from_secs(20), |m: &Maps| {
        let shares = m.shares();
        good.iter().all(|ip| shares.contains_key(ip))
            && !shares.contains_key(&broken)
            && m.flags(broken)
                .is_some_and(|f| f & backend_flags::HEALTHY == 0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // Every backend has its verdict: the good ones healthy, the broken one not.
    wait_for(Duration::from_secs(20), || {
        let d = lb_ok(&agent, &["describe", "service", "primes"]);
        let health: Vec<_> = (0..4).map(|i| d["backends"][i]["health"].clone()).collect();
        anyhow::ensure!(
            health == ["healthy", "healthy", "healthy", "unhealthy"],
            "{health:?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent
        .log()
        .contains(&format!("primes/primes-{BROKEN} is now UNHEALTHY")));

    let vip = SocketAddr::new(t.vip().into(), 80);
    // curl VIP/2 → True, /4 → False, /5 → True, over fresh connections (new flows each),
    // never from the broken backend.
    let answers = t
        .client
        .run_in(move || -> Result<Vec<(String, String)>> {
            let mut got = Vec::new();
            for _ in 0..10 {
                for n in [2, 4, 5] {
                    let (status, text) = http_get(vip, &format!("/{n}"))?;
                    anyhow::ensure!(status == 200, "status {status}: {text}");
                    let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
                    let from = text
                        .lines()
                        .find_map(|l| l.strip_prefix("X-Backend: "))
                        .unwrap_or("?")
                        .to_string();
                    got.push((format!("/{n} {body}"), from));
                }
            }
            Ok(got)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("VIP did not answer: {e}\n{}", agent.log()));
    for (i, (answer, from)) in answers.iter().enumerate() {
        let want = ["/2 True", "/4 False", "/5 True"][i % 3];
        assert_eq!(answer, want, "from {from}");
        assert_ne!(
            from,
            &format!("primes-{BROKEN}"),
            "the broken backend answered"
        );
    }

    // The frontend runs beside the client and asks the VIP for 1..100.
    let frontend = format!("{LAB}/primes_frontend.py");
    let _front = t
        .client
        .spawn(&["python3", &frontend, &t.vip().to_string(), "8080"])
        .unwrap();
    let page = t
        .client
        .run_in(|| {
            let to: SocketAddr = "127.0.0.1:8080".parse().unwrap();
            wait_for(Duration::from_secs(20), || http_get(to, "/1"))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("frontend: {e}\n{}", agent.log()));
    assert_eq!(page.0, 200);
    let green = page.1.matches(r#"bgcolor="green""#).count();
    let red = page.1.matches(r#"bgcolor="red""#).count();
    assert_eq!((green, red), (25, 75), "1..100 holds 25 primes");
    assert!(page.1.contains(r#"<td bgcolor="green">97</td>"#));
    assert!(page.1.contains(r#"<td bgcolor="red">91</td>"#));
}
