//! One side's voice captured to a file (a voicemail): decoded to linear audio (an Opus side
//! through its own decoder), handed to a one-channel recorder, and watched for silence.

use std::time::{Duration, Instant};

use super::{Capture, RecordOpus, Shard};
use crate::media::plane::MediaEvent;
use crate::media::record::{self, Frame, Recorder};
use crate::media::types::Side;
use crate::media::{g711, transcode};

/// Mean absolute level above which a frame counts as voice (about -40 dBFS).
const VOICE_LEVEL: u32 = 330;

impl Shard {
    /// Starts capturing `side` of pair `id` to `recorder`; a capture already running is
    /// ended (its file finalised). Without the pair the recorder is dropped, which
    /// finalises an empty file and reports it.
    pub(super) fn capture(
        &mut self,
        id: u64,
        side: Side,
        recorder: Recorder,
        silence: Option<Duration>,
    ) {
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        let Some(leg) = self.legs[pair.legs[side.index()]].as_ref() else {
            return;
        };
        let opus = match leg.codec {
            Some(transcode::Codec::Opus) => {
                match transcode::Transcoder::new(transcode::Codec::Opus, transcode::Codec::Pcmu) {
                    Ok(t) => Some(Box::new(t)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no Opus decoder for a capture");
                        return;
                    }
                }
            }
            _ => None,
        };
        let clock = leg.codec.map_or(leg.clock, transcode::Codec::clock).max(1);
        pair.capture = Some(Box::new(Capture {
            side,
            recorder,
            opus,
            base: None,
            clock,
            silence,
            last_voice: Instant::now(),
            silence_told: false,
        }));
    }
}

impl Shard {
    /// Starts (`Some`) or stops the pair's recording of both sides; dropping a recorder
    /// closes it, which finalises its file. An Opus side passed through untranscoded gets
    /// a decoder of its own (a transcoded one is recorded from its G.711).
    pub(super) fn record(&mut self, id: u64, recorder: Option<Recorder>) {
        let Some(pair) = self.pairs.get(&id) else {
            return;
        };
        let mut decoders = [None, None];
        if recorder.is_some() {
            for (i, slot) in pair.legs.iter().enumerate() {
                let Some(leg) = self.legs[*slot].as_ref() else {
                    continue;
                };
                let opus = (leg.codec, leg.codec_pt, leg.transcode.is_none());
                if let (Some(transcode::Codec::Opus), Some(pt), true) = opus {
                    match transcode::Transcoder::new(transcode::Codec::Opus, transcode::Codec::Pcmu)
                    {
                        Ok(decoder) => {
                            decoders[i] = Some(Box::new(RecordOpus {
                                pt,
                                decoder,
                                base: None,
                            }))
                        }
                        Err(e) => tracing::warn!(error = %e, "no Opus decoder for a recording"),
                    }
                }
            }
        }
        if let Some(pair) = self.pairs.get_mut(&id) {
            pair.recorder = recorder;
            pair.record_opus = decoders;
        }
    }
}

/// Hands an Opus packet of one side, decoded, to the recording of both sides (`ts` in the
/// side's 48 kHz clock, counted from its first packet so the clock's wrap is no jump).
pub(super) fn record_opus(
    rec: &mut Recorder,
    opus: &mut RecordOpus,
    side: Side,
    ts: u32,
    now: Instant,
    payload: &[u8],
) {
    let mut ulaw = [0u8; 960];
    let Ok(n) = opus.decoder.transcode(payload, &mut ulaw) else {
        return;
    };
    let base = *opus.base.get_or_insert(ts);
    let mut at = (u64::from(ts.wrapping_sub(base)) * u64::from(record::RATE) / 48_000) as u32;
    for chunk in ulaw[..n.min(ulaw.len())].chunks(record::MAX_FRAME) {
        let mut frame = Frame {
            side: side.index() as u8,
            timestamp: at,
            arrival: now,
            len: chunk.len() as u16,
            samples: [0; record::MAX_FRAME],
        };
        for (s, &b) in frame.samples.iter_mut().zip(chunk) {
            *s = g711::ulaw_decode(b);
        }
        rec.push(frame);
        at = at.wrapping_add(chunk.len() as u32);
    }
}

/// Hands one audio packet of the captured side to its recorder, and notes voice.
pub(super) fn capture_packet(c: &mut Capture, pt: u8, ts: u32, now: Instant, payload: &[u8]) {
    let mut ulaw = [0u8; 960];
    let (bytes, decode): (&[u8], fn(u8) -> i16) = match c.opus.as_mut() {
        Some(opus) => match opus.transcode(payload, &mut ulaw) {
            Ok(n) => (&ulaw[..n.min(ulaw.len())], g711::ulaw_decode),
            Err(_) => return,
        },
        None => match pt {
            0 => (payload, g711::ulaw_decode),
            8 => (payload, g711::alaw_decode),
            _ => return,
        },
    };
    let base = *c.base.get_or_insert(ts);
    let mut at =
        (u64::from(ts.wrapping_sub(base)) * u64::from(record::RATE) / u64::from(c.clock)) as u32;
    let mut level = 0u64;
    for chunk in bytes.chunks(record::MAX_FRAME) {
        let mut frame = Frame {
            side: 0,
            timestamp: at,
            arrival: now,
            len: chunk.len() as u16,
            samples: [0; record::MAX_FRAME],
        };
        for (s, &b) in frame.samples.iter_mut().zip(chunk) {
            *s = decode(b);
            level += u64::from(s.unsigned_abs());
        }
        c.recorder.push(frame);
        at = at.wrapping_add(chunk.len() as u32);
    }
    if !bytes.is_empty() && level / bytes.len() as u64 > u64::from(VOICE_LEVEL) {
        c.last_voice = now;
    }
}

/// The capture's silence limit has passed without voice: told once.
pub(super) fn silence_due(c: &mut Capture, now: Instant) -> Option<MediaEvent> {
    let limit = c.silence?;
    if c.silence_told || now.duration_since(c.last_voice) < limit {
        return None;
    }
    c.silence_told = true;
    Some(MediaEvent::Silence(c.side))
}
