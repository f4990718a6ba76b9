//! Small helpers over prometheus-client's encoder for scrape-time collectors: one call
//! writes a whole metric family from rows of (labels, value).

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::{exemplar::Exemplar, MetricType},
};
use std::{collections::HashMap, fmt};

/// Label pairs of one sample, in output order.
pub(super) type Labels<'a> = Vec<(&'static str, &'a str)>;

// Compile-time check that the label type works with the encoder.
const _: fn() = || {
    fn is_label_set<T: EncodeLabelSet>() {}
    is_label_set::<Labels<'static>>();
};

/// One metric family: descriptor, then one sample per row.
pub(super) fn family<'r, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels<'r>, V)>,
    mut sample: impl FnMut(&mut MetricEncoder, &V) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            // An empty label set would render as `name{} v`; write `name v` instead.
            sample(&mut m, &v)?;
        } else {
            sample(&mut m.encode_family(&labels)?, &v)?;
        }
    }
    Ok(())
}

/// A counter family (the encoder adds the `_total` suffix).
pub(super) fn counters<'r>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'r>, u64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, rows, |f, v| {
        f.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

/// A gauge family.
pub(super) fn gauges<'r>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'r>, i64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, rows, |f, v| {
        f.encode_gauge(v)
    })
}

/// A histogram as prometheus-client encodes it: sum, count and NON-cumulative bucket
/// counts with their upper bounds, the last bound being `f64::MAX` (rendered `+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramCounts {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl HistogramCounts {
    /// From Prometheus-shaped data: bounds without +Inf, cumulative counts with one more
    /// entry for +Inf (the total). Missing entries count as 0.
    pub fn from_cumulative(bounds: &[f64], cumulative: &[u64], sum: f64) -> Self {
        let mut buckets = Vec::with_capacity(bounds.len() + 1);
        let mut prev = 0;
        for (i, le) in bounds.iter().copied().chain([f64::MAX]).enumerate() {
            let c = cumulative.get(i).copied().unwrap_or(prev).max(prev);
            buckets.push((le, c - prev));
            prev = c;
        }
        HistogramCounts {
            buckets,
            sum,
            count: prev,
        }
    }
}

/// A histogram family.
pub(super) fn histograms<'r>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'r>, HistogramCounts)>,
) -> fmt::Result {
    let none: Option<&HashMap<usize, Exemplar<NoLabelSet, f64>>> = None;
    family(enc, name, help, MetricType::Histogram, rows, |f, h| {
        f.encode_histogram(h.sum, h.count, &h.buckets, none)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_to_counts() {
        let h = HistogramCounts::from_cumulative(&[0.1, 1.0], &[2, 5, 6], 3.5);
        assert_eq!(h.buckets, [(0.1, 2), (1.0, 3), (f64::MAX, 1)]);
        assert_eq!(h.count, 6);
    }
}
