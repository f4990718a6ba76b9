//! `cargo xtask lab`'s runner (`lb-lab`): it shows the broken backend leaving rotation,
//! prints the 10x10 table with 25 primes, serves the frontend on the host port it was given,
//! and on SIGINT (Ctrl-C) removes everything and exits.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

#[test]
fn the_lab_serves_the_frontend_until_interrupted() {
    if !lb_tests::root_or_skip("lab runner") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut lab = Command::new(env!("CARGO_BIN_EXE_lb-lab"))
        .env("LB_LAB_PORT", port.to_string())
        .env("LB_LAB_SERVE_SECS", "60")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = lab.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ignored = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let serving = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                let done = l.contains("in a browser");
                lines.push(l);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let text = lines.join("\n");
    let fetched = serving.then(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            s,
            "GET /1 HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
        )?;
        let mut page = String::new();
        s.read_to_string(&mut page)?;
        Ok(page)
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lab.id() as i32, libc::SIGINT) };
    let status = lab.wait().unwrap();
    let _ignored = reader.join();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(serving, "the lab never served:\n{text}");
    assert!(
        text.contains("primes-3  unhealthy (out of rotation)"),
        "{text}"
    );
    assert!(text.contains("25 primes"), "{text}");
    assert!(text.contains("[ 97]") && text.contains("  91 "), "{text}");
    let page = fetched.unwrap().unwrap();
    assert_eq!(page.matches(r#"bgcolor="green""#).count(), 25, "{page}");
    assert!(status.success(), "{status:?}");
    assert!(rest.iter().any(|l| l.contains("cleaned up")), "{rest:?}");
}
