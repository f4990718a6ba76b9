//! The connection tables of both address families, read from userspace by [`FlowKey`]:
//! `CONNS`/`YOUNG_FLOWS` hold IPv6 flows and PER_SESSION keys, `CONNS_V4`/`YOUNG_FLOWS_V4`
//! IPv4 flows under the 16-byte [`FlowKeyV4`] (see `lb-ebpf/src/conntrack.rs`). The
//! established tables are LRU hash maps; the young tables are arrays of two-slot sets
//! chosen by the key's young hash (`lb_common::young`), read and written here the way the
//! program does. `lb flows`, `lb explain` and the tests see one table of
//! `FlowKey`s per kind (established, young) whatever the family.

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    names,
    young::{self, KeyWords, YoungSet},
    ConnEntry, FlowKey, FlowKeyV4,
};
use std::path::Path;

use super::loader::{open_pinned, LoadError};

/// The four pinned tables.
pub struct ConnTables {
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    young: Array<MapData, YoungSet<FlowKey>>,
    conns_v4: HashMap<MapData, FlowKeyV4, ConnEntry>,
    young_v4: Array<MapData, YoungSet<FlowKeyV4>>,
}

/// Established flows (`CONNS*`) or flows in their first second (`YOUNG_FLOWS*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    Young,
}

impl ConnTables {
    pub fn open(pin_dir: &Path) -> Result<ConnTables, LoadError> {
        Ok(ConnTables {
            conns: open_pinned(pin_dir, names::MAP_CONNS)?,
            young: open_pinned(pin_dir, names::MAP_YOUNG_FLOWS)?,
            conns_v4: open_pinned(pin_dir, names::MAP_CONNS_V4)?,
            young_v4: open_pinned(pin_dir, names::MAP_YOUNG_FLOWS_V4)?,
        })
    }

    /// The entry of `key` in `table` (the family's map), if any.
    pub fn get(&self, table: Table, key: &FlowKey) -> Option<ConnEntry> {
        match (table, FlowKeyV4::narrow(key)) {
            (Table::Established, Some(k)) => self.conns_v4.get(&k, 0).ok(),
            (Table::Established, None) => self.conns.get(key, 0).ok(),
            (Table::Young, Some(k)) => young_get(&self.young_v4, &k),
            (Table::Young, None) => young_get(&self.young, key),
        }
    }

    /// Writes `entry` for `key` into `table` (the family's map): tests plant entries.
    pub fn insert(
        &mut self,
        table: Table,
        key: &FlowKey,
        entry: ConnEntry,
    ) -> Result<(), LoadError> {
        match (table, FlowKeyV4::narrow(key)) {
            (Table::Established, Some(k)) => self.conns_v4.insert(k, entry, 0)?,
            (Table::Established, None) => self.conns.insert(key, entry, 0)?,
            (Table::Young, Some(k)) => young_insert(&mut self.young_v4, &k, entry)?,
            (Table::Young, None) => young_insert(&mut self.young, key, entry)?,
        }
        Ok(())
    }

    /// Every entry of `table`, both families. An entry evicted between the key walk and its
    /// lookup is simply gone.
    pub fn entries(&self, table: Table) -> Vec<(FlowKey, ConnEntry)> {
        match table {
            Table::Established => {
                let v6 = self.conns.iter().filter_map(Result::ok);
                let v4 = self
                    .conns_v4
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(k, e)| (k.widen(), e));
                v4.chain(v6).collect()
            }
            Table::Young => {
                let v4 = young_entries(&self.young_v4).map(|(k, e)| (k.widen(), e));
                v4.chain(young_entries(&self.young)).collect()
            }
        }
    }
}

/// The index of the set of `key` in `table` (its length is a power of two:
/// `young::sets_for`).
fn young_index<K: KeyWords>(table: &Array<MapData, YoungSet<K>>, key: &K) -> u32
where
    YoungSet<K>: aya::Pod,
{
    young::set_index(key.young_hash(), table.len() - 1)
}

fn young_get<K: KeyWords>(table: &Array<MapData, YoungSet<K>>, key: &K) -> Option<ConnEntry>
where
    YoungSet<K>: aya::Pod,
{
    let set = table.get(&young_index(table, key), 0).ok()?;
    set.find(key, key.young_hash()).map(|(_, e)| e)
}

/// Writes `entry` for `key` into its set as the program does (`YoungSet::push`).
fn young_insert<K: KeyWords>(
    table: &mut Array<MapData, YoungSet<K>>,
    key: &K,
    entry: ConnEntry,
) -> Result<(), aya::maps::MapError>
where
    YoungSet<K>: aya::Pod,
{
    let index = young_index(table, key);
    let mut set = table.get(&index, 0)?;
    set.push(key, &entry, young::check(key.young_hash(), &entry), || ());
    table.set(index, set, 0)
}

/// The slots of `table` that hold an entry (a valid check for their key).
fn young_entries<K: KeyWords>(
    table: &Array<MapData, YoungSet<K>>,
) -> impl Iterator<Item = (K, ConnEntry)> + '_
where
    YoungSet<K>: aya::Pod,
{
    table
        .iter()
        .filter_map(Result::ok)
        .flat_map(|set| set.ways)
        .filter_map(|s| Some((s.key, s.read(&s.key, s.key.young_hash())?)))
}

/// An upgrade from a build that kept IPv4 flows in `CONNS`: moves those entries into
/// `CONNS_V4`, so established flows keep their backends across the upgrade. IPv4
/// PER_SESSION entries stay where they are (sessions of both families use `FlowKey`). Young
/// flows are not moved: that build's young tables were LRU maps, retired at load.
/// Returns how many moved (0 on every later start). The loader calls it only when the pins
/// predate the IPv4 tables.
pub fn move_ipv4_entries(pin_dir: &Path) -> Result<usize, LoadError> {
    let mut t = ConnTables::open(pin_dir)?;
    let old: Vec<(FlowKey, ConnEntry)> = t
        .conns
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| FlowKeyV4::narrow(k).is_some())
        .collect();
    for (k, e) in &old {
        t.insert(Table::Established, k, *e)?;
        // Gone already (evicted) is fine.
        let _ = t.conns.remove(k);
    }
    Ok(old.len())
}
