//! Keeping an output RTP stream continuous: the SSRC, sequence numbers and timestamps a
//! receiver sees stay one stream when the sender restarts or jumps, and when the switch
//! inserts packets of its own (DTMF, prompts) into it.

/// Output stream state of one direction: keeps SSRC, sequence and timestamp continuous for
/// the receiver when the sender restarts or jumps.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Smoother {
    started: bool,
    pub(super) out_ssrc: u32,
    in_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    last_in_seq: u16,
    last_in_ts: u32,
    last_out_seq: u16,
    last_out_ts: u32,
    ts_step: u32,
    /// The switch inserted media: the next relayed packet continues after it.
    resync: bool,
}

impl Smoother {
    /// The sequence number and timestamp to send for an input packet, and whether the
    /// packet must be rewritten.
    pub(super) fn next(&mut self, ssrc: u32, seq: u16, ts: u32) -> (u16, u32, bool) {
        if !self.started {
            self.started = true;
            self.out_ssrc = ssrc;
            self.in_ssrc = ssrc;
            self.ts_step = 160;
        } else {
            let seq_jump = seq.wrapping_sub(self.last_in_seq);
            let ts_jump = ts.wrapping_sub(self.last_in_ts);
            let restarted = std::mem::take(&mut self.resync)
                || ssrc != self.in_ssrc
                || (seq_jump > 3000 && seq_jump < 0xffff - 100)
                || (ts_jump > 8000 * 60 && ts_jump < u32::MAX - 8000 * 60);
            if restarted {
                // Continue the output where it left off, one packet later.
                self.in_ssrc = ssrc;
                self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_offset = self.last_out_ts.wrapping_add(self.ts_step).wrapping_sub(ts);
            } else if seq_jump == 1 && ts_jump > 0 && ts_jump < 8000 {
                self.ts_step = ts_jump;
            }
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Only advance on packets that move forward (a late packet keeps its place).
        if seq.wrapping_sub(self.last_in_seq) < 0x8000 || !self.started {
            self.last_in_seq = seq;
            self.last_in_ts = ts;
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
        }
        let rewrite = self.seq_offset != 0 || self.ts_offset != 0 || ssrc != self.out_ssrc;
        (out_seq, out_ts, rewrite)
    }

    /// Takes one sequence number for a packet the switch inserts into this output stream
    /// (relayed packets after it are shifted by one); with the stream's SSRC.
    pub(super) fn inject(&mut self) -> (u16, u32) {
        if !self.started {
            // Nothing relayed yet: the inserted packets start the stream.
            self.started = true;
            self.out_ssrc = 0x5753_0000 | (self.last_out_seq as u32);
            self.ts_step = 160;
        }
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_out_seq = self.last_out_seq.wrapping_add(1);
        (self.last_out_seq, self.out_ssrc)
    }

    /// Takes the sequence number and timestamp for `samples` of media the switch inserts
    /// into this output stream (a prompt); relayed packets continue after it.
    pub(super) fn inject_media(&mut self, samples: u32) -> (u16, u32, u32) {
        if !self.started {
            self.started = true;
            self.out_ssrc = 0x5753_0000 | u32::from(self.last_out_seq);
            self.ts_step = samples;
            self.last_out_ts = 0u32.wrapping_sub(samples);
        }
        self.last_out_seq = self.last_out_seq.wrapping_add(1);
        self.last_out_ts = self.last_out_ts.wrapping_add(self.ts_step.max(1));
        self.ts_step = samples;
        self.resync = true;
        (self.last_out_seq, self.last_out_ts, self.out_ssrc)
    }

    /// The timestamp of an event starting now in this output stream: one packet after the
    /// last one sent.
    pub(super) fn next_event_timestamp(&self) -> u32 {
        self.last_out_ts.wrapping_add(self.ts_step.max(1))
    }
}
