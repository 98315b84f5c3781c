//! Counters, a latency histogram, and the per-room ledger every client keeps
//! to find lost, duplicated and out-of-order messages.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Microseconds since the epoch; every load process on the machine shares
/// this clock, so a receiver can time a message another process sent.
pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

const SUB: u64 = 16;
const BUCKETS: usize = 64 * SUB as usize;

/// A log-linear histogram of microseconds (16 buckets per power of two, so
/// within about 6 %), lock-free so every client task can record into it.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let log = 63 - u64::from(v.leading_zeros());
        let mantissa = (v >> (log - 4)) & (SUB - 1);
        ((log - 3) * SUB + mantissa) as usize
    }

    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let log = i / SUB + 3;
        let mantissa = i % SUB;
        // The middle of the bucket.
        ((SUB + mantissa) << (log - 4)) + (1 << (log - 4)) / 2
    }

    pub(crate) fn record(&self, us: u64) {
        self.buckets[Self::index(us).min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile in milliseconds, or 0 without samples.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Self::value(i) as f64 / 1000.0;
            }
        }
        0.0
    }

    pub(crate) fn summary(&self) -> Latency {
        Latency {
            samples: self.count(),
            p50_ms: round2(self.quantile_ms(0.50)),
            p99_ms: round2(self.quantile_ms(0.99)),
            max_ms: round2(self.quantile_ms(1.0)),
        }
    }
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// What every client of a run adds to.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// Deliveries the acked sends call for: for each ack, the room's other members.
    pub(crate) expected: AtomicU64,
    pub(crate) typing: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) delivery: Histogram,
    pub(crate) ack: Histogram,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            typing: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            delivery: Histogram::new(),
            ack: Histogram::new(),
        }
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// One client's view of one room: which seqs it has (received, or sent
/// itself and acked) and the highest it received, as a bit set over seqs.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoomLedger {
    bits: Vec<u64>,
    /// Highest seq received as an event (own sends excluded).
    pub(crate) last_received: u64,
    /// Highest seq known at all, received or own.
    pub(crate) high: u64,
    /// Every seq up to this one is known.
    prefix: u64,
}

/// What the ledger made of a received seq.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Receipt {
    New,
    Duplicate,
    OutOfOrder,
}

impl RoomLedger {
    fn set(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        let had = self.bits[w] & (1 << b) != 0;
        self.bits[w] |= 1 << b;
        self.high = self.high.max(seq);
        !had
    }

    /// Whether this client has `seq`, received or sent.
    pub(crate) fn has(&self, seq: u64) -> bool {
        self.bits.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// The highest seq up to which this client has every message: what it
    /// passes as `since_seq` when it resumes.
    pub(crate) fn prefix(&mut self) -> u64 {
        while self.has(self.prefix + 1) {
            self.prefix += 1;
        }
        self.prefix
    }

    /// Records a seq this client sent itself (from its ack).
    pub(crate) fn own(&mut self, seq: u64) {
        self.set(seq);
    }

    /// Records a received seq.
    pub(crate) fn receive(&mut self, seq: u64) -> Receipt {
        if !self.set(seq) {
            return Receipt::Duplicate;
        }
        let in_order = seq > self.last_received;
        self.last_received = self.last_received.max(seq);
        if in_order { Receipt::New } else { Receipt::OutOfOrder }
    }

    /// Seqs in `1..=last_seq` this client has neither received nor sent.
    pub(crate) fn missing(&self, last_seq: u64) -> u64 {
        (1..=last_seq).filter(|s| !self.has(*s)).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p99 = h.quantile_ms(0.99) * 1000.0;
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.07, "{p99}");
        let p50 = h.quantile_ms(0.5) * 1000.0;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.07, "{p50}");
    }

    #[test]
    fn ledger_classifies() {
        let mut l = RoomLedger::default();
        l.own(1);
        assert_eq!(l.receive(2), Receipt::New);
        assert_eq!(l.receive(4), Receipt::New);
        assert_eq!(l.receive(3), Receipt::OutOfOrder);
        assert_eq!(l.receive(4), Receipt::Duplicate);
        assert_eq!(l.missing(6), 2);
    }
}
