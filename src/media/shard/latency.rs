//! The time relayed packets spend in the switch, sampled: from the kernel's receive stamp
//! on the socket the packet came in by (its wait in that socket's queue included) to the
//! system call that sends it on, and the change of that time between a leg's successive
//! samples (the delay variation the switch adds). Exported as histograms by direction.

use super::Leg;
use crate::media::batch;
use crate::media::types::Side;
use crate::telemetry;

/// One relayed packet in this many, per leg, is timed.
const SAMPLE: u32 = 16;

/// A leg's sampling state.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sampling {
    /// Packets sent since the last sample.
    count: u32,
    /// The last sample's time in the switch, nanoseconds.
    last: Option<u64>,
}

/// The shard's histograms, by the side a packet is sent to.
pub(super) struct Latency {
    added: [metrics::Histogram; 2],
    variation: [metrics::Histogram; 2],
}

impl Latency {
    pub(super) fn new() -> Latency {
        let toward = |side: Side| match side {
            Side::A => "b_to_a",
            Side::B => "a_to_b",
        };
        let by = |name: &'static str| {
            [Side::A, Side::B].map(|side| metrics::histogram!(name, "direction" => toward(side)))
        };
        Latency {
            added: by(telemetry::MEDIA_LATENCY_ADDED),
            variation: by(telemetry::MEDIA_DELAY_VARIATION),
        }
    }

    /// `leg` has just sent a packet that reached the switch at `arrived` (nanoseconds
    /// since the Unix epoch; 0 for a packet the switch made itself, which is not timed).
    pub(super) fn sent(&self, leg: &mut Leg, arrived: u64) {
        if arrived == 0 {
            return;
        }
        let s = &mut leg.latency;
        s.count += 1;
        if s.count < SAMPLE {
            return;
        }
        s.count = 0;
        let spent = batch::now_ns().saturating_sub(arrived);
        let side = leg.side.index();
        self.added[side].record(spent as f64 / 1e9);
        if let Some(last) = s.last {
            self.variation[side].record(spent.abs_diff(last) as f64 / 1e9);
        }
        s.last = Some(spent);
    }
}
