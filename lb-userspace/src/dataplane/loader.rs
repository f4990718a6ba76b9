//! Loading, pinning and attaching the XDP program.
//!
//! Every map is pinned under the pin folder and the XDP attachment is a pinned bpf_link, so
//! the dataplane keeps forwarding while the agent is down, and a restarted (or upgraded)
//! agent adopts the pinned maps and swaps its program into the pinned link atomically
//! (BPF_LINK_UPDATE): no packet meets a detached interface, no flow loses its entry.

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
        Xdp,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{names, Settings};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

use super::EBPF_OBJECT;

/// Every pinned map, by name.
pub const PINNED_MAPS: &[&str] = &[
    names::MAP_VIPS,
    names::MAP_VIP_STATE,
    names::MAP_VIP_ADDR_SET,
    names::MAP_SERVICES,
    names::MAP_BACKENDS,
    names::MAP_MAGLEV,
    names::MAP_CONNS,
    names::MAP_YOUNG_FLOWS,
    names::MAP_CONNS_V4,
    names::MAP_YOUNG_FLOWS_V4,
    names::MAP_SETTINGS,
    names::MAP_VIP_STATS,
    names::MAP_BACKEND_STATS,
    names::MAP_REASONS,
];

/// Maps older builds pinned and this one no longer has, removed at load: `VIP_ADDRS` (the
/// VIP addresses as a hash map, replaced by `VIP_ADDR_SET`) and the young tables as LRU
/// hash maps (`YOUNG_CONNS*`, replaced by the `YOUNG_FLOWS*` arrays: flows younger than a
/// second at the upgrade are hashed again, to the same backend unless Maglev changed).
const RETIRED_PINS: &[&str] = &["VIP_ADDRS", "YOUNG_CONNS", "YOUNG_CONNS_V4"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The eBPF object was refused by the kernel or a map could not be created or pinned.
    #[error("loading the XDP program failed (are you root, with bpffs at /sys/fs/bpf?): {0}")]
    Ebpf(#[from] aya::EbpfError),
    /// A program-level operation (load, attach, link update) failed.
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// A map read or write failed.
    #[error("map access: {0}")]
    Map(#[from] aya::maps::MapError),
    /// A pinned link could not be opened, pinned or converted.
    #[error("pinned XDP link: {0}")]
    Link(String),
    /// Filesystem problem with the pin folder or bpffs.
    #[error("{0}")]
    Io(String),
}

/// Sizes and settings fixed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub ring_size: u32,
    pub max_services: u32,
    /// Entries of each `CONNS*`; each `YOUNG_FLOWS*` has the next power of two of slots, in
    /// sets of two.
    pub conn_table_size: u32,
    /// `Settings::conn_promotions_per_sec` (written into `SETTINGS` at load).
    pub conn_promotions_per_sec: u32,
}

impl Sizes {
    fn maglev_entries(&self) -> u32 {
        self.max_services * 2 * self.ring_size
    }

    fn young_sets(&self) -> u32 {
        lb_common::young::sets_for(self.conn_table_size)
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (a fresh machine lacks it).
pub fn ensure_bpffs() -> Result<(), LoadError> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| LoadError::Io(format!("{}: {e}", root.display())))?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: plain mount(2) with static C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Io(format!(
            "mounting bpffs at /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        )));
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Drops pinned maps whose size no longer matches `sizes` (a changed ring size, service
/// count or table size cannot be adopted) or whose shape an upgrade changed (more verdict
/// reasons, a longer `Settings`); returns the names dropped.
fn drop_mismatched_pins(dir: &Path, sizes: &Sizes) -> Vec<&'static str> {
    let settings_size = std::mem::size_of::<Settings>() as u32;
    // (name, entries, value size when it matters)
    let want = [
        (names::MAP_MAGLEV, sizes.maglev_entries(), None),
        (names::MAP_SERVICES, sizes.max_services, None),
        (names::MAP_CONNS, sizes.conn_table_size, None),
        (names::MAP_YOUNG_FLOWS, sizes.young_sets(), None),
        (names::MAP_CONNS_V4, sizes.conn_table_size, None),
        (names::MAP_YOUNG_FLOWS_V4, sizes.young_sets(), None),
        (names::MAP_REASONS, lb_common::Reason::COUNT, None),
        (names::MAP_SETTINGS, 1, Some(settings_size)),
    ];
    let mut dropped = Vec::new();
    for (name, entries, value_size) in want {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let ok = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map(|i| i.max_entries() == entries && value_size.is_none_or(|v| i.value_size() == v))
            .unwrap_or(false);
        if !ok {
            warn!(map = name, "pinned map has another size than the configuration asks; recreating it (its flows and tables start empty)");
            let _ignored = std::fs::remove_file(&path);
            dropped.push(name);
        }
    }
    dropped
}

/// Loads the object with every map pinned under `pin_dir` (adopting maps already there) and
/// writes the program-wide settings; the program's aya-log diagnostics off.
pub fn load(pin_dir: &Path, sizes: Sizes) -> Result<Ebpf, LoadError> {
    load_with(pin_dir, sizes, EBPF_OBJECT, false)
}

/// [`load`], with the program's rare-path logs (aya-log, `lb-ebpf/src/diag.rs`) on or off.
/// The level is a global of the object, fixed at load: off, each log site is one load and
/// a branch. With logs on, the caller must read them (`aya_log::EbpfLogger`).
pub fn load_logged(pin_dir: &Path, sizes: Sizes, xdp_log: bool) -> Result<Ebpf, LoadError> {
    load_with(pin_dir, sizes, EBPF_OBJECT, xdp_log)
}

/// [`load`] with another build of the program (the benchmark compares against an earlier
/// object; everything else loads the embedded one).
pub fn load_object(pin_dir: &Path, sizes: Sizes, object: &[u8]) -> Result<Ebpf, LoadError> {
    load_with(pin_dir, sizes, object, false)
}

fn load_with(
    pin_dir: &Path,
    sizes: Sizes,
    object: &[u8],
    xdp_log: bool,
) -> Result<Ebpf, LoadError> {
    ensure_bpffs()?;
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| LoadError::Io(format!("creating {}: {e}", pin_dir.display())))?;
    drop_mismatched_pins(pin_dir, &sizes);
    // Pins of a build before the IPv4 connection tables: their IPv4 flows are moved across
    // once the new tables exist (`conn_tables::move_ipv4_entries`); no scan on other starts.
    let before_ipv4_tables =
        pin_dir.join(names::MAP_CONNS).exists() && !pin_dir.join(names::MAP_CONNS_V4).exists();
    for name in RETIRED_PINS {
        // An older build's map the program no longer has: nothing reads it.
        let _ignored = std::fs::remove_file(pin_dir.join(name));
    }
    let paths: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|n| (*n, pin_dir.join(n))).collect();
    // aya-log's level global defaults to "everything": 0 switches every log site off. Not
    // required to exist: an earlier build (the benchmark's baseline) has no logs.
    let level: u8 = if xdp_log {
        aya_log::Level::Info as u8
    } else {
        0
    };
    // A read-only global, so the verifier knows the mask: the young tables' set index costs
    // no map lookup. Required in this build's object (left at 0, every flow would share one
    // set); an earlier build a benchmark loads as its baseline has none.
    let young_mask = sizes.young_sets() - 1;
    let own_object = std::ptr::eq(object, EBPF_OBJECT);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(aya_log::LEVEL, &level, false)
        .override_global(names::GLOBAL_YOUNG_MASK, &young_mask, own_object)
        .map_max_entries(names::MAP_MAGLEV, sizes.maglev_entries())
        .map_max_entries(names::MAP_SERVICES, sizes.max_services)
        .map_max_entries(names::MAP_CONNS, sizes.conn_table_size)
        .map_max_entries(names::MAP_YOUNG_FLOWS, sizes.young_sets())
        .map_max_entries(names::MAP_CONNS_V4, sizes.conn_table_size)
        .map_max_entries(names::MAP_YOUNG_FLOWS_V4, sizes.young_sets());
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object)?;
    let mut settings: Array<&mut MapData, Settings> = Array::try_from(
        ebpf.map_mut(names::MAP_SETTINGS)
            .ok_or_else(|| LoadError::Io("SETTINGS map missing from the object".into()))?,
    )?;
    settings.set(
        0,
        Settings {
            ring_size: sizes.ring_size,
            max_services: sizes.max_services,
            conn_promotions_per_sec: sizes.conn_promotions_per_sec,
        },
        0,
    )?;
    let moved = if before_ipv4_tables {
        super::conn_tables::move_ipv4_entries(pin_dir)?
    } else {
        0
    };
    if moved > 0 {
        info!(
            entries = moved,
            "moved IPv4 flows from the pinned family-neutral tables into the IPv4 tables (upgrade)"
        );
    }
    Ok(ebpf)
}

/// Path of the pinned link for an interface.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// How the program ended up attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link existed: the new program replaced the old one atomically.
    Replaced,
    Native,
    /// Native mode was refused (driver without XDP support): generic (skb) mode, slower.
    Generic,
}

/// Attaches (or atomically re-attaches) the balancer to `iface` and pins the link.
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    mode: crate::config::XdpMode,
) -> Result<Attached, LoadError> {
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROG_LB)
        .ok_or_else(|| LoadError::Io(format!("program {} missing", names::PROG_LB)))?
        .try_into()?;
    attach_program(prog, &link_pin(pin_dir, iface), iface, mode)
}

/// Attaches `prog` (loaded here if it is not yet) to `iface` with its link pinned at `pin`:
/// a working pinned link gets the program swapped in atomically, otherwise it attaches in
/// `mode` (auto: native, falling back to generic). Shared by the balancer and `lb decap`.
pub fn attach_program(
    prog: &mut Xdp,
    pin: &Path,
    iface: &str,
    mode: crate::config::XdpMode,
) -> Result<Attached, LoadError> {
    if prog.fd().is_err() {
        prog.load()?;
    }
    if pin.exists() {
        match PinnedLink::from_pin(pin) {
            Ok(pinned) => {
                let fd: FdLink = pinned.into();
                let link = XdpLink::try_from(fd).map_err(|e| LoadError::Link(e.to_string()))?;
                let id = prog.attach_to_link(link)?;
                // The link stays pinned; dropping our handle must not detach it.
                let link = prog.take_link(id)?;
                std::mem::forget(link);
                info!(
                    iface,
                    "adopted the pinned XDP link and swapped in this program"
                );
                return Ok(Attached::Replaced);
            }
            Err(e) => {
                warn!(iface, error = %e, "stale link pin; attaching afresh");
                let _ignored = std::fs::remove_file(pin);
            }
        }
    }
    let (id, how) = match mode {
        crate::config::XdpMode::Generic => (prog.attach(iface, XdpMode::Skb)?, Attached::Generic),
        crate::config::XdpMode::Native => (prog.attach(iface, XdpMode::Driver)?, Attached::Native),
        crate::config::XdpMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, Attached::Native),
            Err(e) => {
                warn!(iface, error = %e, "native XDP refused by the driver; falling back to generic mode (slower, same behaviour)");
                (prog.attach(iface, XdpMode::Skb)?, Attached::Generic)
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| LoadError::Link(e.to_string()))?;
    fd.pin(pin)
        .map_err(|e| LoadError::Link(format!("pinning {}: {e}", pin.display())))?;
    Ok(how)
}

/// Detaches from every interface and removes every pin: the dataplane is gone, flows too.
pub fn teardown(pin_dir: &Path) -> Result<Vec<String>, LoadError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(LoadError::Io(format!("{}: {e}", pin_dir.display()))),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("link_") {
            if let Ok(link) = PinnedLink::from_pin(&path) {
                // Unpin then drop: the link closes and the program detaches.
                let _fd = link.unpin().map_err(|e| LoadError::Io(e.to_string()))?;
            }
        }
        let _ignored = std::fs::remove_file(&path);
        removed.push(name);
    }
    let _ignored = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// Opens a pinned map as a typed aya map.
pub fn open_pinned<T>(pin_dir: &Path, name: &str) -> Result<T, LoadError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        let next = if !pin_dir.exists() {
            format!(
                "no dataplane is pinned at {}: start the agent with `dataplane.interfaces` in \
                 its config (`sudo lb run --config <file>`), or name the agent's config with \
                 --config (or its pin folder with --pin-path)",
                pin_dir.display()
            )
        } else if !path.exists() {
            format!(
                "{} holds no {name}: is it the pin folder of another program or release? \
                 Check `dataplane.pin_path` of the agent's config",
                pin_dir.display()
            )
        } else {
            "run the command as root (sudo): pinned maps are root's".to_string()
        };
        LoadError::Io(format!(
            "opening pinned map {}: {e}; {next}",
            path.display()
        ))
    })?;
    Ok(T::try_from(Map::from_map_data(data)?)?)
}
