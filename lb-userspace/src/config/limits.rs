//! Bounds of configuration values and the one safe way to turn seconds into a [`Duration`].
//!
//! Every number of the file is range-checked by validation against these bounds, so no
//! value can reach code that would panic or overflow on it (`Duration::from_secs_f64` panics
//! on infinity, NaN, negatives and values above ~1.8e19). Code that converts config seconds
//! still goes through [`duration`], which saturates, as a second line of defence.

use std::time::Duration;

/// The longest duration any `*_sec` field may hold: Google Cloud's backend-service timeout
/// maximum (2^31 − 1 s, about 68 years).
pub const MAX_TIMEOUT_SEC: f64 = 2_147_483_647.0;

/// Maglev lookup-table entries the dataplane may allocate: `max_services × 2 × ring_size`
/// (two halves per service) at 4 bytes each, 2^26 entries = 256 MiB of kernel memory.
pub const MAX_MAGLEV_ENTRIES: u64 = 1 << 26;

/// Largest connection table (LRU hash): about 1 GiB of kernel memory at ~128 bytes per
/// entry with the hash map's overhead.
pub const MAX_CONN_TABLE_SIZE: u32 = 1 << 23;

/// RING_HASH `minimum_ring_size` bound (Google Cloud allows 8,388,608; a ring entry costs
/// 12 bytes per service, so this keeps one ring at 12 MiB).
pub const MAX_RING_HASH_SIZE: u32 = 1 << 20;

/// Longest resource name (Google Cloud: 63).
pub const MAX_NAME_LEN: usize = 63;

/// Longest path, host, regex or header text in the file (Google Cloud: 1024 for paths and
/// regexes).
pub const MAX_TEXT_LEN: usize = 1024;

/// Longest header value in a header action.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;

/// Most retries a retry policy may ask for (Google Cloud: 25).
pub const MAX_NUM_RETRIES: u32 = 25;

/// `seconds` as a [`Duration`], saturating instead of panicking: NaN and negatives give
/// zero, values above [`MAX_TIMEOUT_SEC`] (or infinite) give that maximum.
pub fn duration(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.min(MAX_TIMEOUT_SEC))
}

/// Why `seconds` is not a usable duration in `min..=max`, or `None` when it is.
pub fn check_seconds(seconds: f64, min: f64, max: f64) -> Option<String> {
    if !seconds.is_finite() {
        return Some(format!("{seconds} is not a finite number of seconds"));
    }
    if seconds < min || seconds > max {
        let hint = if min > 0.0 && seconds <= 0.0 {
            " (must be positive)"
        } else {
            ""
        };
        return Some(format!("{seconds} is outside {min}..={max} seconds{hint}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_never_panics() {
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            1e20,
            0.0,
            1.5,
        ] {
            let _ = duration(v);
        }
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(duration(f64::INFINITY), duration(MAX_TIMEOUT_SEC));
        assert_eq!(duration(-3.0), Duration::ZERO);
    }

    #[test]
    fn seconds_checks() {
        assert!(check_seconds(f64::NAN, 0.0, 10.0).is_some());
        assert!(check_seconds(f64::INFINITY, 0.0, 10.0).is_some());
        assert!(check_seconds(-0.5, 0.0, 10.0).is_some());
        assert!(check_seconds(11.0, 0.0, 10.0).is_some());
        assert!(check_seconds(10.0, 0.0, 10.0).is_none());
    }
}
