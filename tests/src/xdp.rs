//! Loads the balancer into a private pin folder (no interface attached) and runs it on
//! frames with `BPF_PROG_TEST_RUN`. Dropping the harness removes every pinned object.

use anyhow::{Context, Result};
use aya::programs::Xdp;
use lb_common::{names, ConnEntry, FlowKey};
use lb_userspace::dataplane::{
    conn_tables::{ConnTables, Table},
    loader::{self, Sizes},
    plan::L4Plan,
    programmer::{Assignment, Programmer},
    stats::Counters,
    testrun::{self, RunResult},
};
use std::path::PathBuf;

pub struct XdpHarness {
    pub ebpf: aya::Ebpf,
    pub pin_dir: PathBuf,
    pub programmer: Programmer,
}

/// Services the harness's maps hold (small: each takes two Maglev tables).
const SERVICES: u32 = 8;

impl XdpHarness {
    /// Loads the object with small maps (ring `ring_size`, 8 services, 4096 connections).
    pub fn new(ring_size: u32) -> Result<Self> {
        Self::with_conn_table(
            ring_size,
            4096,
            lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC,
        )
    }

    /// Loads the object with a given connection-table size and promotion rate limit.
    pub fn with_conn_table(
        ring_size: u32,
        conn_table_size: u32,
        promotions_per_sec: u32,
    ) -> Result<Self> {
        Self::with_sizes(ring_size, conn_table_size, promotions_per_sec, SERVICES)
    }

    /// Loads the object with room for `max_services` services.
    pub fn with_services(ring_size: u32, max_services: u32) -> Result<Self> {
        let promotions = lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC;
        Self::with_sizes(ring_size, 4096, promotions, max_services)
    }

    fn with_sizes(
        ring_size: u32,
        conn_table_size: u32,
        promotions_per_sec: u32,
        max_services: u32,
    ) -> Result<Self> {
        let object = lb_userspace::dataplane::EBPF_OBJECT;
        Self::with_object(
            ring_size,
            conn_table_size,
            promotions_per_sec,
            max_services,
            object,
        )
    }

    /// Loads another build of the program (e.g. an earlier one, for before/after figures).
    pub fn with_object(
        ring_size: u32,
        conn_table_size: u32,
        promotions_per_sec: u32,
        max_services: u32,
        object: &[u8],
    ) -> Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique("lbtest-"));
        let sizes = Sizes {
            ring_size,
            max_services,
            conn_table_size,
            conn_promotions_per_sec: promotions_per_sec,
        };
        let loaded = (|| -> Result<(aya::Ebpf, Programmer)> {
            let mut ebpf =
                loader::load_object(&pin_dir, sizes, object).context("loading the balancer")?;
            for p in [names::PROG_LB, names::PROG_PASS] {
                let prog: &mut Xdp = ebpf.program_mut(p).context("program")?.try_into()?;
                prog.load()?;
            }
            let programmer = Programmer::open(&pin_dir, ring_size, max_services)?;
            Ok((ebpf, programmer))
        })();
        // The maps are pinned before the programs load: a refused program (verifier) or any
        // later failure must not leave this private pin folder behind, as no `Drop` will run.
        let (ebpf, programmer) = loaded.inspect_err(|_| {
            let _ignored = loader::teardown(&pin_dir);
        })?;
        Ok(XdpHarness {
            ebpf,
            pin_dir,
            programmer,
        })
    }

    pub fn apply(&mut self, plan: &L4Plan) -> Result<Assignment> {
        Ok(self.programmer.apply(plan)?)
    }

    fn run_prog(&self, name: &str, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let prog: &Xdp = self.ebpf.program(name).context("program")?.try_into()?;
        Ok(testrun::run(prog.fd()?, frame, repeat)?)
    }

    /// Runs the balancer once.
    pub fn run(&self, frame: &[u8]) -> Result<RunResult> {
        self.run_prog(names::PROG_LB, frame, 1)
    }

    /// Runs the balancer once as if the frame arrived on interface `ifindex` (of the calling
    /// thread's network namespace: FIB lookups happen there).
    pub fn run_on(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<RunResult> {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROG_LB)
            .context("program")?
            .try_into()?;
        Ok(testrun::run_on(prog.fd()?, frame, repeat, Some(ifindex))?)
    }

    /// Runs the balancer `repeat` times on the same buffer (for timing).
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        self.run_prog(names::PROG_LB, frame, repeat)
    }

    /// Runs the trivial pass program (the cost floor).
    pub fn run_pass(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        self.run_prog(names::PROG_PASS, frame, repeat)
    }

    /// Both families' connection tables (`conn_tables`), keyed by `FlowKey`.
    pub fn conn_tables(&self) -> Result<ConnTables> {
        Ok(ConnTables::open(&self.pin_dir)?)
    }

    /// The entry of `key` in the young table (`young`) or the connection table.
    pub fn conn_get(&self, young: bool, key: &FlowKey) -> Option<ConnEntry> {
        self.conn_tables().ok()?.get(table(young), key)
    }

    /// Plants `entry` for `key` in the young table (`young`) or the connection table.
    pub fn conn_insert(&self, young: bool, key: &FlowKey, entry: ConnEntry) -> Result<()> {
        Ok(self.conn_tables()?.insert(table(young), key, entry)?)
    }

    /// Entries in a connection table, both families.
    pub fn conn_entries(&self, young: bool) -> Result<usize> {
        Ok(self.conn_tables()?.entries(table(young)).len())
    }

    /// Sends `frame` (a packet of a flow already seen) until the flow is promoted into
    /// `CONNS` (a packet at least a second after its entry was made); at most 5 s.
    pub fn promote(&self, frame: &[u8]) -> Result<()> {
        self.promote_on(frame, None)
    }

    /// [`Self::promote`] for frames arriving on interface `ifindex` (encapsulating paths
    /// need the namespace's FIB).
    pub fn promote_on(&self, frame: &[u8], ifindex: Option<u32>) -> Result<()> {
        let before = self.reason("conn_promoted")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let r = match ifindex {
                Some(i) => self.run_on(frame, i, 1)?,
                None => self.run(frame)?,
            };
            anyhow::ensure!(
                r.verdict == 3,
                "flow not forwarded while waiting for promotion"
            );
            if self.reason("conn_promoted")? > before {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("the flow was not promoted within 5 s")
    }

    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters::open(&self.pin_dir)?)
    }

    /// Packets counted under one reason name.
    pub fn reason(&self, name: &str) -> Result<u64> {
        Ok(self
            .counters()?
            .reasons()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or(0))
    }
}

impl Drop for XdpHarness {
    fn drop(&mut self) {
        let _ignored = loader::teardown(&self.pin_dir);
    }
}

fn table(young: bool) -> Table {
    if young {
        Table::Young
    } else {
        Table::Established
    }
}
