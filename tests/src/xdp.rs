//! Loads the balancer into a private pin folder (no interface attached) and runs it on
//! frames with `BPF_PROG_TEST_RUN`. Dropping the harness removes every pinned object.

use anyhow::{Context, Result};
use aya::programs::Xdp;
use lb_common::names;
use lb_userspace::dataplane::{
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

impl XdpHarness {
    /// Loads the object with small maps (ring `ring_size`, 4 services, 4096 connections).
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
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique("lbtest-"));
        let sizes = Sizes {
            ring_size,
            max_services: 4,
            conn_table_size,
            conn_promotions_per_sec: promotions_per_sec,
        };
        let mut ebpf = loader::load(&pin_dir, sizes).context("loading the balancer")?;
        for p in [names::PROG_LB, names::PROG_PASS] {
            let prog: &mut Xdp = ebpf.program_mut(p).context("program")?.try_into()?;
            prog.load()?;
        }
        let programmer = Programmer::open(&pin_dir, ring_size, 4)?;
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

    /// Runs the balancer `repeat` times on the same buffer (for timing).
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        self.run_prog(names::PROG_LB, frame, repeat)
    }

    /// Runs the trivial pass program (the cost floor).
    pub fn run_pass(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        self.run_prog(names::PROG_PASS, frame, repeat)
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
