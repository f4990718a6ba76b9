//! Speaks the announcement decision (`model::announce`) to BIRD 2.
//!
//! The agent writes an include file holding one static protocol with a route per announced
//! prefix and runs `birdc -s <control socket> configure`; BIRD's own configuration includes
//! the file and exports that protocol's routes to its BGP sessions (packaging/bird/). A file
//! plus `configure` was chosen over driving routes through the control socket: BIRD 2's
//! socket has no command that adds or removes a static route, the file is the one place
//! where the announced set is written down (readable by operators, kept across agent
//! restarts and BIRD restarts alike), and `configure` reloads only what changed, so BGP
//! sessions stay up.
//!
//! The agent's task only compares and hands the desired set over (a watch channel); a
//! worker task writes the file atomically and runs birdc with a deadline, retrying every
//! [`RETRY`] while it fails, so a stopped or slow BIRD never blocks the agent. `configure`
//! runs when the set changes, and once at start (harmless when BIRD already has the file:
//! unchanged protocols are left alone), and when the file no longer says what BIRD was told
//! (checked every [`RECHECK`]: emptied at BIRD's start, edited by hand). An agent that
//! stops leaves the file as it is, so an upgrade withdraws nothing, and for its first
//! [`STARTUP_GRACE`] a starting agent withdraws nothing the file announced (MACs and health
//! verdicts are still settling; a node drain acts at once). `lb down` writes the empty
//! protocol ([`withdraw_all`]).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Announce, AnnounceDaemon};
use crate::model::announce::{AnnounceStatus, RuleAnnouncement};

/// The BIRD protocol the include file defines; BIRD's configuration exports its routes.
pub const PROTOCOL: &str = "lb_vips";
/// How long one `birdc configure` may take.
const BIRDC_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts while writing or configuring fails.
const RETRY: Duration = Duration::from_secs(2);
/// How often the include file is compared with what BIRD was told.
const RECHECK: Duration = Duration::from_secs(5);

/// The include file's text for a set of prefixes ("10.0.0.10/32").
pub fn render(prefixes: &BTreeSet<String>) -> String {
    let mut s = String::from(
        "# Written by lb (the agent's [announce] section); do not edit: the next change of the\n\
         # announced VIPs replaces it. Routes are blackholes: BGP exports them (next hop self),\n\
         # and the XDP program takes the packets before the kernel's routing sees them.\n",
    );
    s += &format!("protocol static {PROTOCOL} {{\n  ipv4;\n");
    // IPv4 only: validation refuses announced IPv6 rules (`validate_announce`).
    for p in prefixes {
        s += &format!("  route {p} blackhole;\n");
    }
    s += "}\n";
    s
}

/// How long a starting agent keeps announcing what the file already announces: backend
/// MACs (ARP) and health verdicts settle in this time, and a restart must not withdraw a
/// VIP only because they are not known yet.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// The agent's side: the desired set and the status shown by `lb status` and metrics.
pub struct Announcer {
    desired: watch::Sender<BTreeSet<String>>,
    status: Arc<Mutex<AnnounceStatus>>,
    /// Prefixes the include file announced when the agent started, kept until `grace_until`
    /// unless the node is drained.
    kept: BTreeSet<String>,
    grace_until: std::time::Instant,
}

/// The prefixes an include file announces (its `route <prefix> blackhole;` lines).
fn announced_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("route"), Some(p), Some("blackhole;")) => Some(p.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The set handed to BIRD: the decision, plus during the start-up grace what the file
/// already announced (a drain withdraws at once).
fn effective(
    set: BTreeSet<String>,
    kept: &BTreeSet<String>,
    in_grace: bool,
    node_drained: bool,
) -> BTreeSet<String> {
    if in_grace && !node_drained {
        set.union(kept).cloned().collect()
    } else {
        set
    }
}

impl Announcer {
    /// Starts the worker for `cfg` (None when no daemon is configured). Call inside the
    /// agent's runtime.
    pub fn start(cfg: &Announce, first: BTreeSet<String>, node_drained: bool) -> Option<Announcer> {
        if cfg.daemon == AnnounceDaemon::None {
            return None;
        }
        let kept = std::fs::read_to_string(cfg.include_file())
            .map(|t| announced_in(&t))
            .unwrap_or_default();
        let first = effective(first, &kept, true, node_drained);
        let status = Arc::new(Mutex::new(AnnounceStatus {
            daemon: "bird".into(),
            include_file: cfg.include_file().display().to_string(),
            ..Default::default()
        }));
        let (tx, rx) = watch::channel(first);
        let bird = Bird {
            include_file: cfg.include_file(),
            control_socket: cfg.control_socket(),
        };
        tokio::spawn(worker(bird, rx, status.clone()));
        Some(Announcer {
            desired: tx,
            status,
            kept,
            grace_until: std::time::Instant::now() + STARTUP_GRACE,
        })
    }

    /// Records the decision and hands a changed set of prefixes to the worker.
    pub fn update(&self, rules: Vec<RuleAnnouncement>, node_drained: bool) {
        let in_grace = std::time::Instant::now() < self.grace_until;
        let set = effective(
            crate::model::announce::prefixes(&rules),
            &self.kept,
            in_grace,
            node_drained,
        );
        {
            let mut st = lock(&self.status);
            st.rules = rules;
            st.node_drained = node_drained;
            st.in_sync = st.configured.as_ref() == Some(&set);
        }
        self.desired.send_if_modified(|cur| {
            if *cur == set {
                false
            } else {
                info!(announce = ?set, "announced VIPs change");
                *cur = set;
                true
            }
        });
    }

    pub fn status(&self) -> AnnounceStatus {
        lock(&self.status).clone()
    }

    /// The shared status, for the metrics collector.
    pub fn shared(&self) -> Arc<Mutex<AnnounceStatus>> {
        self.status.clone()
    }
}

fn lock(m: &Mutex<AnnounceStatus>) -> std::sync::MutexGuard<'_, AnnounceStatus> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Bird {
    include_file: PathBuf,
    control_socket: PathBuf,
}

impl Bird {
    /// Writes the file (when its text differs) and runs `birdc configure`.
    async fn apply(&self, set: &BTreeSet<String>) -> Result<(), String> {
        write_if_changed(&self.include_file, &render(set))?;
        configure(&self.control_socket).await
    }
}

/// Applies every new desired set; while an attempt fails, retries the latest set.
async fn worker(
    bird: Bird,
    mut rx: watch::Receiver<BTreeSet<String>>,
    status: Arc<Mutex<AnnounceStatus>>,
) {
    loop {
        let set = rx.borrow_and_update().clone();
        let result = bird.apply(&set).await;
        let failed = {
            let mut st = lock(&status);
            st.configure_runs += 1;
            match result {
                Ok(()) => {
                    if st.last_error.take().is_some() {
                        info!("BIRD reconfigured; announcements are in step again");
                    }
                    st.configured = Some(set.clone());
                    st.in_sync = *rx.borrow() == set;
                    false
                }
                Err(e) => {
                    st.configure_errors += 1;
                    st.in_sync = false;
                    if st.last_error.as_deref() != Some(&e) {
                        warn!(error = %e, "announcing through BIRD failed; retrying every {RETRY:?}");
                    }
                    st.last_error = Some(e);
                    true
                }
            }
        };
        if failed {
            // A new set is taken at once; otherwise the same one is tried again.
            match tokio::time::timeout(RETRY, rx.changed()).await {
                Ok(Err(_)) => return, // The agent stopped.
                Ok(Ok(())) | Err(_) => continue,
            }
        }
        // Wait for the next set, and meanwhile check that the file still says what BIRD was
        // told: a file emptied or edited by someone else (BIRD's own start-up drop-in, an
        // operator) is written back and BIRD reconfigured.
        loop {
            match tokio::time::timeout(RECHECK, rx.changed()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return, // The agent stopped; the file stays as it is.
                Err(_) => {
                    let want = render(&rx.borrow());
                    if !holds(&bird.include_file, &want) {
                        warn!(file = %bird.include_file.display(), "the announce include file changed behind the agent's back; writing it again");
                        break;
                    }
                }
            }
        }
    }
}

/// Replaces `path` atomically (a temporary next to it, then rename) unless it already holds
/// `text`. The temporary is created exclusively without following links.
fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if holds(path, text) {
        return Ok(());
    }
    let ctx = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".lb-tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.file_type().is_file() => std::fs::remove_file(&tmp).map_err(ctx)?,
        Ok(_) => {
            return Err(format!(
                "{}: something other than a file sits at the temporary's path; remove it",
                tmp.display()
            ))
        }
        Err(_) => {}
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            // BIRD runs as its own user: readable by all whatever the agent's umask.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ignored = std::fs::remove_file(&tmp);
    }
    written.map_err(ctx)
}

/// Whether the file at `path` holds exactly `text` (read only when its size says it can).
fn holds(path: &Path, text: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == text.len() as u64)
        && std::fs::read_to_string(path).is_ok_and(|t| t == text)
}

/// `birdc -s <socket> configure`, with a deadline; BIRD's answer on failure.
async fn configure(socket: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("birdc");
    cmd.arg("-s")
        .arg(socket)
        .arg("configure")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(BIRDC_DEADLINE, cmd.output())
        .await
        .map_err(|_| format!("birdc configure took over {BIRDC_DEADLINE:?}"))?
        .map_err(|e| format!("running birdc: {e} (is bird2 installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // birdc exits 0 even when BIRD refuses the file; its reply says so.
    if out.status.success() && configured_ok(&text) {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "birdc -s {} configure: {} {}",
            socket.display(),
            text.trim(),
            err.trim()
        ))
    }
}

/// Whether birdc's reply says the configuration was taken.
fn configured_ok(reply: &str) -> bool {
    reply.contains("Reconfigured")
        || reply.contains("Reconfiguration in progress")
        || reply.contains("Reconfiguration already in progress")
}

/// `lb down`: empties the announced set and reconfigures BIRD, so the routers stop sending
/// this balancer traffic before its dataplane goes. Nothing to do without a daemon.
pub fn withdraw_all(cfg: &Announce) -> anyhow::Result<Option<PathBuf>> {
    if cfg.daemon == AnnounceDaemon::None {
        return Ok(None);
    }
    let file = cfg.include_file();
    write_if_changed(&file, &render(&BTreeSet::new())).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(configure(&cfg.control_socket()))
        .map_err(anyhow::Error::msg)?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_include_file_is_one_static_protocol() {
        let set: BTreeSet<String> = ["10.0.0.100/32".to_string(), "10.0.0.7/32".to_string()]
            .into_iter()
            .collect();
        let t = render(&set);
        assert!(t.contains("protocol static lb_vips {\n  ipv4;\n"), "{t}");
        assert!(
            t.contains("  route 10.0.0.100/32 blackhole;\n  route 10.0.0.7/32 blackhole;\n}"),
            "{t}"
        );
        let empty = render(&BTreeSet::new());
        assert!(
            empty.ends_with("protocol static lb_vips {\n  ipv4;\n}\n"),
            "{empty}"
        );
    }

    #[test]
    fn the_file_is_replaced_atomically_and_only_when_it_differs() {
        let d = std::env::temp_dir().join(format!("lb-announce-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("lb-vips.conf");
        write_if_changed(&f, "a").unwrap();
        let m1 = std::fs::metadata(&f).unwrap();
        write_if_changed(&f, "a").unwrap();
        let m2 = std::fs::metadata(&f).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m1.ino(), m2.ino(), "unchanged text: not rewritten");
        write_if_changed(&f, "b").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "b");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "BIRD's user must read it whatever the umask");
        // A symlink at the temporary's path is refused and its target untouched.
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("lb-vips.conf.lb-tmp")).unwrap();
        assert!(write_if_changed(&f, "c").unwrap_err().contains("temporary"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_starting_agent_keeps_what_the_file_announced_unless_drained() {
        let file: BTreeSet<String> = ["10.0.0.100/32".to_string()].into_iter().collect();
        assert_eq!(announced_in(&render(&file)), file);
        let none = BTreeSet::new();
        assert_eq!(
            effective(none.clone(), &file, true, false),
            file,
            "in the grace"
        );
        assert!(
            effective(none.clone(), &file, true, true).is_empty(),
            "drained"
        );
        assert!(
            effective(none, &file, false, false).is_empty(),
            "after the grace"
        );
    }

    #[test]
    fn birdc_replies_are_read() {
        assert!(configured_ok(
            "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured\n"
        ));
        assert!(!configured_ok(
            "BIRD 2.0.12 ready.\n/etc/bird/lb-vips.conf:3:9 syntax error\n"
        ));
    }
}
