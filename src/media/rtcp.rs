//! RTCP sender and receiver reports (RFC 3550 §6.4) and the receiver statistics behind them
//! (§A.3 loss, §A.8 jitter), sans-IO: packets are read from and written to caller buffers,
//! time is an input.

/// Why a datagram is not a usable RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Shorter than a header or than its length field says.
    #[error("packet too short")]
    TooShort,
    /// Not version 2.
    #[error("RTCP version {0}")]
    Version(u8),
    /// More report blocks than the packet holds.
    #[error("report count exceeds the packet")]
    Count,
}

/// One reception report block (§6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// A sender report's sender info (§6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// NTP timestamp (64-bit fixed point).
    pub ntp: u64,
    /// RTP timestamp matching `ntp`.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// A report found in a compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reporter.
    pub ssrc: u32,
    /// Present in a sender report.
    pub sender: Option<SenderInfo>,
    /// Reception report blocks (at most 31).
    pub blocks: Vec<ReportBlock>,
}

const SR: u8 = 200;
const RR: u8 = 201;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn read_block(b: &[u8]) -> ReportBlock {
    let lost = (u32::from(b[5]) << 16) | (u32::from(b[6]) << 8) | u32::from(b[7]);
    // Sign-extend the 24-bit count.
    let cumulative_lost = ((lost << 8) as i32) >> 8;
    ReportBlock {
        ssrc: be32(&b[0..4]),
        fraction_lost: b[4],
        cumulative_lost,
        highest_seq: be32(&b[8..12]),
        jitter: be32(&b[12..16]),
        last_sr: be32(&b[16..20]),
        delay_since_last_sr: be32(&b[20..24]),
    }
}

/// The SR and RR packets of a compound RTCP packet, in order; other packet types (SDES,
/// BYE, APP, feedback) are skipped. Calls `f` for each report; stops at the first error.
pub fn for_each_report(datagram: &[u8], mut f: impl FnMut(Report)) -> Result<(), RtcpError> {
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::TooShort);
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::Version(version));
        }
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
        if rest.len() < len {
            return Err(RtcpError::TooShort);
        }
        let packet = &rest[..len];
        rest = &rest[len..];
        let (sender_len, sender) = match pt {
            SR if len >= 28 => (
                20,
                Some(SenderInfo {
                    ntp: (u64::from(be32(&packet[8..12])) << 32) | u64::from(be32(&packet[12..16])),
                    rtp_timestamp: be32(&packet[16..20]),
                    packets: be32(&packet[20..24]),
                    octets: be32(&packet[24..28]),
                }),
            ),
            RR if len >= 8 => (0, None),
            SR | RR => return Err(RtcpError::TooShort),
            _ => continue,
        };
        let blocks_at = 8 + sender_len;
        if blocks_at + 24 * count > len {
            return Err(RtcpError::Count);
        }
        let blocks = packet[blocks_at..blocks_at + 24 * count]
            .chunks_exact(24)
            .map(read_block)
            .collect();
        f(Report {
            ssrc: be32(&packet[4..8]),
            sender,
            blocks,
        });
    }
    Ok(())
}

fn write_block(out: &mut [u8], b: &ReportBlock) {
    out[0..4].copy_from_slice(&b.ssrc.to_be_bytes());
    out[4] = b.fraction_lost;
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
    out[5..8].copy_from_slice(&lost.to_be_bytes()[1..4]);
    out[8..12].copy_from_slice(&b.highest_seq.to_be_bytes());
    out[12..16].copy_from_slice(&b.jitter.to_be_bytes());
    out[16..20].copy_from_slice(&b.last_sr.to_be_bytes());
    out[20..24].copy_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// Writes an SR (with `sender`) or an RR (without) from `ssrc` with up to 31 `blocks` into
/// `out`; returns its length, or `None` when `out` is too small.
pub fn write_report(
    out: &mut [u8],
    ssrc: u32,
    sender: Option<&SenderInfo>,
    blocks: &[ReportBlock],
) -> Option<usize> {
    let blocks = &blocks[..blocks.len().min(31)];
    let len = 8 + if sender.is_some() { 20 } else { 0 } + 24 * blocks.len();
    let out = out.get_mut(..len)?;
    out[0] = 0x80 | blocks.len() as u8;
    out[1] = if sender.is_some() { SR } else { RR };
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let mut at = 8;
    if let Some(s) = sender {
        out[8..16].copy_from_slice(&s.ntp.to_be_bytes());
        out[16..20].copy_from_slice(&s.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&s.packets.to_be_bytes());
        out[24..28].copy_from_slice(&s.octets.to_be_bytes());
        at = 28;
    }
    for b in blocks {
        write_block(&mut out[at..at + 24], b);
        at += 24;
    }
    Some(len)
}

/// What a receiver knows about one source (§A.1, §A.3, §A.8), updated per packet without
/// allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiverStats {
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Jitter estimate ×16 (the §A.8 fixed-point form).
    jitter_q4: u32,
    last_transit: Option<i64>,
    /// Packets expected in runs before the last resynchronisation.
    expected_before: u64,
    /// §A.1: after a large jump, the sequence number that confirms the new run.
    bad_seq: Option<u16>,
}

/// A forward jump larger than this is not loss but a new run (the sender restarted).
const MAX_DROPOUT: u16 = 3000;
/// A backward step larger than this is not reordering.
const MAX_MISORDER: u16 = 100;

impl ReceiverStats {
    /// A packet with sequence `seq` and RTP timestamp `ts` arrived at `arrival` (in the
    /// clock rate of the payload, e.g. 8000 Hz units).
    pub fn on_packet(&mut self, seq: u16, ts: u32, arrival: u32) {
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta == 0 {
                // A duplicate.
            } else if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
                self.bad_seq = None;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A large jump (§A.1): a new run if the next packet follows it.
                if self.bad_seq == Some(seq) {
                    self.expected_before = self.expected();
                    self.base_seq = u32::from(seq.wrapping_sub(1));
                    self.max_seq = seq;
                    self.cycles = 0;
                    self.bad_seq = None;
                    self.last_transit = None;
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                }
            }
        }
        self.received += 1;
        let transit = i64::from(arrival) - i64::from(ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs().min(u64::from(u32::MAX)) as u32;
            // J += (|D| - J) / 16, kept ×16.
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Extended highest sequence number received.
    pub fn extended_max(&self) -> u32 {
        self.cycles + u32::from(self.max_seq)
    }

    /// Packets expected so far.
    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.expected_before + u64::from(self.extended_max()) - u64::from(self.base_seq) + 1
    }

    /// Packets received so far (duplicates included, as §A.3 counts them).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets lost so far (negative with duplicates).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter, in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// The report block for this source, and the fraction lost since the previous call.
    pub fn report(&mut self, ssrc: u32, last_sr: u32, delay_since_last_sr: u32) -> ReportBlock {
        let expected = self.expected();
        let interval_expected = expected - self.expected_prior;
        let interval_received = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = interval_expected as i64 - interval_received as i64;
        let fraction_lost = if interval_expected == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / interval_expected as i64).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// Round-trip time from a report block (§6.4.1): `now` as the middle 32 bits of an NTP
/// timestamp; `None` when the peer has not seen one of our SRs yet.
pub fn round_trip(block: &ReportBlock, now_ntp_middle: u32) -> Option<std::time::Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = now_ntp_middle
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    // Units of 1/65536 s; a "negative" result (clock skew) is treated as zero.
    let rtt = if rtt > 0x8000_0000 { 0 } else { rtt };
    Some(std::time::Duration::from_micros(
        u64::from(rtt) * 1_000_000 / 65_536,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(n: u32) -> ReportBlock {
        ReportBlock {
            ssrc: n,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 70_000 + n,
            jitter: 12,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        }
    }

    #[test]
    fn sender_and_receiver_reports_round_trip_in_a_compound_packet() {
        let mut buf = [0u8; 256];
        let sender = SenderInfo {
            ntp: 0xe000_0000_8000_0000,
            rtp_timestamp: 160,
            packets: 50,
            octets: 8000,
        };
        let n = write_report(&mut buf, 7, Some(&sender), &[block(1), block(2)]).unwrap();
        // An SDES chunk between the reports is skipped.
        let sdes = [0x81, 202, 0, 1, 0, 0, 0, 7];
        buf[n..n + 8].copy_from_slice(&sdes);
        let m = write_report(&mut buf[n + 8..], 9, None, &[block(3)]).unwrap();
        let mut reports = Vec::new();
        for_each_report(&buf[..n + 8 + m], |r| reports.push(r)).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].ssrc, 7);
        assert_eq!(reports[0].sender, Some(sender));
        assert_eq!(reports[0].blocks, [block(1), block(2)]);
        assert_eq!(reports[1].sender, None);
        assert_eq!(reports[1].blocks, [block(3)]);
    }

    #[test]
    fn broken_packets_are_refused() {
        assert_eq!(
            for_each_report(&[0x80, 201, 0], |_| {}),
            Err(RtcpError::TooShort)
        );
        assert_eq!(
            for_each_report(&[0x40, 201, 0, 1, 0, 0, 0, 0], |_| {}),
            Err(RtcpError::Version(1))
        );
        // RR announcing two blocks in a packet of one word of SSRC.
        assert_eq!(
            for_each_report(&[0x82, 201, 0, 1, 0, 0, 0, 0], |_| {}),
            Err(RtcpError::Count)
        );
        // Length field longer than the datagram.
        assert_eq!(
            for_each_report(&[0x80, 201, 0, 9, 0, 0, 0, 0], |_| {}),
            Err(RtcpError::TooShort)
        );
    }

    #[test]
    fn loss_and_wraparound_are_counted() {
        let mut s = ReceiverStats::default();
        // 65530..=65535 and 0..=9 with 3 and 4 missing: 16 expected, 14 received.
        for seq in (65_530u16..=65_535)
            .chain(0..=9)
            .filter(|s| *s != 3 && *s != 4)
        {
            s.on_packet(seq, u32::from(seq) * 160, u32::from(seq) * 160);
        }
        assert_eq!(s.expected(), 16);
        assert_eq!(s.received(), 14);
        assert_eq!(s.lost(), 2);
        assert_eq!(s.extended_max(), 65_536 + 9);
        let r = s.report(1, 0, 0);
        assert_eq!(r.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(r.cumulative_lost, 2);
        // A late, reordered packet does not move the highest sequence number back.
        s.on_packet(65_533, 0, 0);
        assert_eq!(s.extended_max(), 65_536 + 9);
    }

    #[test]
    fn a_sender_restart_starts_a_new_run_instead_of_counting_loss() {
        let mut s = ReceiverStats::default();
        for seq in 100..110u16 {
            s.on_packet(seq, 0, 0);
        }
        // The sender restarts far away: two packets in a row confirm the new run.
        for seq in 40_000..40_010u16 {
            s.on_packet(seq, 0, 0);
        }
        assert_eq!(s.received(), 20);
        assert_eq!(s.expected(), 20, "no loss, no negative loss");
        assert_eq!(s.lost(), 0);
        // A single stray packet far away is not a new run.
        s.on_packet(5, 0, 0);
        s.on_packet(40_010, 0, 0);
        assert_eq!(
            s.lost(),
            -1,
            "the stray counts as received, nothing as lost"
        );
    }

    #[test]
    fn jitter_follows_variable_transit() {
        let mut s = ReceiverStats::default();
        // Packets every 160 units, arriving alternately 0 and 80 units late: |D| = 80 each
        // time, so J converges to 80.
        for i in 0..2000u32 {
            let late = if i % 2 == 0 { 0 } else { 80 };
            s.on_packet(i as u16, i * 160, i * 160 + late);
        }
        assert!((78..=80).contains(&s.jitter()), "{}", s.jitter());
        let mut steady = ReceiverStats::default();
        for i in 0..100u32 {
            steady.on_packet(i as u16, i * 160, i * 160 + 1000);
        }
        assert_eq!(steady.jitter(), 0);
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        let b = ReportBlock {
            last_sr: 0x0001_0000,
            delay_since_last_sr: 0x0000_8000, // 0.5 s
            ..ReportBlock::default()
        };
        // Now = LSR + 0.75 s → RTT 0.25 s.
        let rtt = round_trip(&b, 0x0001_c000).unwrap();
        assert_eq!(rtt.as_millis(), 250);
        assert_eq!(round_trip(&ReportBlock::default(), 5), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = for_each_report(&data, |_| {});
        }

        #[test]
        fn write_then_parse_is_identity(ssrc: u32, n in 0usize..31, lost in -0x80_0000i32..0x80_0000) {
            let blocks: Vec<_> = (0..n as u32).map(|i| ReportBlock { cumulative_lost: lost, ..block(i) }).collect();
            let mut buf = vec![0u8; 8 + 24 * n];
            let len = write_report(&mut buf, ssrc, None, &blocks).unwrap();
            let mut got = None;
            for_each_report(&buf[..len], |r| got = Some(r)).unwrap();
            let got = got.unwrap();
            prop_assert_eq!(got.ssrc, ssrc);
            prop_assert_eq!(got.blocks, blocks);
        }
    }
}
