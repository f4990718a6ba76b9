//! The connection tables of both address families, read from userspace by [`FlowKey`]:
//! `CONNS`/`YOUNG_CONNS` hold IPv6 flows, `CONNS_V4`/`YOUNG_CONNS_V4` IPv4 flows under the
//! 20-byte [`FlowKeyV4`] (the program's per-packet lookup hashes the whole key; see
//! `lb-ebpf/src/conntrack.rs`). `lb flows`, `lb explain` and the tests see one table of
//! `FlowKey`s per kind (established, young) whatever the family.

use aya::maps::{HashMap, MapData};
use lb_common::{names, ConnEntry, FlowKey, FlowKeyV4};
use std::path::Path;

use super::loader::{open_pinned, LoadError};

/// The four pinned tables.
pub struct ConnTables {
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    young: HashMap<MapData, FlowKey, ConnEntry>,
    conns_v4: HashMap<MapData, FlowKeyV4, ConnEntry>,
    young_v4: HashMap<MapData, FlowKeyV4, ConnEntry>,
}

/// Established flows (`CONNS*`) or flows in their first second (`YOUNG_CONNS*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    Young,
}

impl ConnTables {
    pub fn open(pin_dir: &Path) -> Result<ConnTables, LoadError> {
        Ok(ConnTables {
            conns: open_pinned(pin_dir, names::MAP_CONNS)?,
            young: open_pinned(pin_dir, names::MAP_YOUNG_CONNS)?,
            conns_v4: open_pinned(pin_dir, names::MAP_CONNS_V4)?,
            young_v4: open_pinned(pin_dir, names::MAP_YOUNG_CONNS_V4)?,
        })
    }

    /// The entry of `key` in `table` (the family's map), if any.
    pub fn get(&self, table: Table, key: &FlowKey) -> Option<ConnEntry> {
        let (wide, v4) = self.pair(table);
        match FlowKeyV4::narrow(key) {
            Some(k) => v4.get(&k, 0).ok(),
            None => wide.get(key, 0).ok(),
        }
    }

    /// Writes `entry` for `key` into `table` (the family's map): tests plant entries.
    pub fn insert(
        &mut self,
        table: Table,
        key: &FlowKey,
        entry: ConnEntry,
    ) -> Result<(), LoadError> {
        let (wide, v4) = match table {
            Table::Established => (&mut self.conns, &mut self.conns_v4),
            Table::Young => (&mut self.young, &mut self.young_v4),
        };
        match FlowKeyV4::narrow(key) {
            Some(k) => v4.insert(k, entry, 0)?,
            None => wide.insert(key, entry, 0)?,
        }
        Ok(())
    }

    /// Every entry of `table`, both families. An entry evicted between the key walk and its
    /// lookup is simply gone.
    pub fn entries(&self, table: Table) -> Vec<(FlowKey, ConnEntry)> {
        let (wide, v4) = self.pair(table);
        let v6 = wide.iter().filter_map(Result::ok);
        let v4 = v4
            .iter()
            .filter_map(Result::ok)
            .map(|(k, e)| (k.widen(), e));
        v4.chain(v6).collect()
    }

    fn pair(
        &self,
        table: Table,
    ) -> (
        &HashMap<MapData, FlowKey, ConnEntry>,
        &HashMap<MapData, FlowKeyV4, ConnEntry>,
    ) {
        match table {
            Table::Established => (&self.conns, &self.conns_v4),
            Table::Young => (&self.young, &self.young_v4),
        }
    }
}

/// An upgrade from a build that kept IPv4 flows in `CONNS`/`YOUNG_CONNS`: moves those
/// entries into the IPv4 tables, so the flows keep their backends across the upgrade. IPv4
/// PER_SESSION entries stay where they are (sessions of both families use `FlowKey`).
/// Returns how many moved (0 on every later start). The loader calls it only when the pins
/// predate the IPv4 tables.
pub fn move_ipv4_entries(pin_dir: &Path) -> Result<usize, LoadError> {
    let mut t = ConnTables::open(pin_dir)?;
    let mut moved = 0;
    for table in [Table::Established, Table::Young] {
        let old: Vec<(FlowKey, ConnEntry)> = t
            .pair(table)
            .0
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| FlowKeyV4::narrow(k).is_some())
            .collect();
        for (k, e) in old {
            t.insert(table, &k, e)?;
            let wide = match table {
                Table::Established => &mut t.conns,
                Table::Young => &mut t.young,
            };
            // Gone already (evicted) is fine.
            let _ = wide.remove(&k);
            moved += 1;
        }
    }
    Ok(moved)
}
