//! Prompts: WAV files (16-bit PCM mono at 8, 16 or 48 kHz) and Ogg Opus files (RFC 7845,
//! mono or stereo) converted once, at load, to the 8 kHz samples the shards play into a leg.
//!
//! 16 and 48 kHz are brought down by an integer factor (2, 6) after a windowed-sinc
//! low-pass filter below the new Nyquist frequency, so nothing folds back into the
//! telephone band.

use std::sync::Arc;

/// Why a prompt file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// Not a RIFF/WAVE file, or a chunk runs past the end.
    #[error("not a WAV file: {0}")]
    Format(&'static str),
    /// A WAV the switch does not play.
    #[error("unsupported WAV: {0}")]
    Unsupported(String),
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
}

/// The longest prompt decoded from Ogg Opus, seconds.
pub(crate) const MAX_PROMPT_SECS: usize = 600;

/// A prompt ready to play: 8 kHz mono samples, shared between calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    samples: Arc<[i16]>,
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Low-pass FIR taps (windowed sinc, Blackman window), unity gain at DC, for a cutoff of
/// `cutoff` (fraction of the input sample rate).
fn lowpass(taps: usize, cutoff: f64) -> Vec<f64> {
    let m = (taps - 1) as f64;
    let mut h: Vec<f64> = (0..taps)
        .map(|n| {
            let x = n as f64 - m / 2.0;
            let sinc = if x == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let w = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / m).cos()
                + 0.08 * (4.0 * std::f64::consts::PI * n as f64 / m).cos();
            sinc * w
        })
        .collect();
    let sum: f64 = h.iter().sum();
    for v in &mut h {
        *v /= sum;
    }
    h
}

/// Filters and keeps every `factor`-th sample.
fn decimate(input: &[i16], factor: usize) -> Vec<i16> {
    // Cut a little below the new Nyquist frequency (0.5 / factor).
    let h = lowpass(16 * factor + 1, 0.45 / factor as f64);
    let half = h.len() / 2;
    (0..input.len() / factor)
        .map(|k| {
            let centre = k * factor;
            let mut acc = 0.0;
            for (j, tap) in h.iter().enumerate() {
                let i = centre as isize + j as isize - half as isize;
                if i >= 0 && (i as usize) < input.len() {
                    acc += tap * f64::from(input[i as usize]);
                }
            }
            acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
        })
        .collect()
}

impl Prompt {
    /// Ringback as most of the world hears it (ITU-T E.180: 425 Hz, 1 s on, 4 s off), one
    /// cadence long; played in a loop. Made once and shared by every call that rings.
    pub fn ringback() -> Prompt {
        static RINGBACK: std::sync::LazyLock<Prompt> = std::sync::LazyLock::new(|| {
            let on = (0..8000).map(|i| {
                let t = f64::from(i) / 8000.0;
                ((2.0 * std::f64::consts::PI * 425.0 * t).sin() * 6000.0) as i16
            });
            Prompt::from_samples(on.chain(std::iter::repeat_n(0, 4 * 8000)).collect())
        });
        RINGBACK.clone()
    }

    /// 8 kHz samples as they are.
    pub fn from_samples(samples: Vec<i16>) -> Prompt {
        Prompt {
            samples: samples.into(),
        }
    }

    /// Reads a WAV file's bytes.
    pub fn from_wav(bytes: &[u8]) -> Result<Prompt, PromptError> {
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(PromptError::Format("no RIFF/WAVE header"));
        }
        let mut at = 12;
        let mut format = None;
        let mut data = None;
        while at + 8 <= bytes.len() {
            let id = &bytes[at..at + 4];
            let len = le32(&bytes[at + 4..at + 8]) as usize;
            let body = bytes
                .get(at + 8..at + 8 + len)
                .ok_or(PromptError::Format("chunk runs past the end"))?;
            match id {
                b"fmt " if len >= 16 => {
                    format = Some((
                        le16(&body[0..2]),
                        le16(&body[2..4]),
                        le32(&body[4..8]),
                        le16(&body[14..16]),
                    ))
                }
                b"data" => data = Some(body),
                _ => {}
            }
            at += 8 + len + (len & 1);
        }
        let (tag, channels, rate, bits) = format.ok_or(PromptError::Format("no fmt chunk"))?;
        let data = data.ok_or(PromptError::Format("no data chunk"))?;
        if tag != 1 || bits != 16 {
            return Err(PromptError::Unsupported(format!(
                "format {tag} with {bits} bits per sample (16-bit PCM only)"
            )));
        }
        if channels != 1 {
            return Err(PromptError::Unsupported(format!(
                "{channels} channels (mono only)"
            )));
        }
        let samples: Vec<i16> = data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let samples = match rate {
            8000 => samples,
            16_000 => decimate(&samples, 2),
            48_000 => decimate(&samples, 6),
            other => {
                return Err(PromptError::Unsupported(format!(
                    "{other} Hz (8000, 16000 or 48000 only)"
                )))
            }
        };
        Ok(Prompt::from_samples(samples))
    }

    /// Reads an Ogg Opus file's bytes (RFC 7845): decoded at 48 kHz, its pre-skip
    /// dropped, the end trimmed to the last page's granule position, stereo mixed down,
    /// then brought to 8 kHz. A file that decodes to more than [`MAX_PROMPT_SECS`] is
    /// refused as it decodes (a few bytes of Opus can stand for hours of silence).
    pub fn from_ogg_opus(bytes: &[u8]) -> Result<Prompt, PromptError> {
        let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
        let mut next = || {
            reader
                .read_packet()
                .map_err(|_| PromptError::Format("not a readable Ogg stream"))
        };
        let head = next()?.ok_or(PromptError::Format("an empty Ogg stream"))?;
        if head.data.len() < 19 || &head.data[..8] != b"OpusHead" {
            return Err(PromptError::Format("no OpusHead: not an Ogg Opus file"));
        }
        let channels = head.data[9];
        let pre_skip = usize::from(le16(&head.data[10..12]));
        let mapping = head.data[18];
        let layout = match (channels, mapping) {
            (1, 0) => opus::Channels::Mono,
            (2, 0) => opus::Channels::Stereo,
            _ => {
                return Err(PromptError::Unsupported(format!(
                    "{channels} channels with mapping family {mapping} (mono or stereo only)"
                )))
            }
        };
        let tags = next()?.ok_or(PromptError::Format("no OpusTags"))?;
        if !tags.data.starts_with(b"OpusTags") {
            return Err(PromptError::Format("no OpusTags"));
        }
        let mut decoder = opus::Decoder::new(48_000, layout)
            .map_err(|e| PromptError::Unsupported(format!("Opus decoder: {e}")))?;
        let n = usize::from(channels);
        // The longest Opus packet is 120 ms: 5760 samples per channel.
        let mut frame = vec![0i16; 5760 * n];
        let mut pcm: Vec<i16> = Vec::new();
        let mut end = None;
        while let Some(packet) = next()? {
            let got = decoder
                .decode(&packet.data, &mut frame, false)
                .map_err(|e| PromptError::Unsupported(format!("an Opus packet: {e}")))?;
            for chunk in frame[..got * n].chunks_exact(n) {
                let sum: i32 = chunk.iter().map(|&v| i32::from(v)).sum();
                pcm.push((sum / n as i32) as i16);
            }
            if pcm.len() > MAX_PROMPT_SECS * 48_000 {
                return Err(PromptError::Unsupported(format!(
                    "longer than {MAX_PROMPT_SECS} s"
                )));
            }
            if packet.last_in_stream() {
                end = usize::try_from(packet.absgp_page()).ok();
            }
        }
        // Granule positions count 48 kHz samples from the start, pre-skip included.
        if let Some(end) = end.filter(|e| *e < pcm.len()) {
            pcm.truncate(end);
        }
        let pcm = pcm.get(pre_skip..).unwrap_or_default();
        Ok(Prompt::from_samples(decimate(pcm, 6)))
    }

    /// Reads a prompt file, WAV or Ogg Opus (told apart by their first bytes).
    pub fn load(path: &std::path::Path) -> Result<Prompt, PromptError> {
        let bytes =
            std::fs::read(path).map_err(|e| PromptError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// A prompt file's bytes, WAV or Ogg Opus.
    pub fn from_bytes(bytes: &[u8]) -> Result<Prompt, PromptError> {
        if bytes.starts_with(b"OggS") {
            Self::from_ogg_opus(bytes)
        } else {
            Self::from_wav(bytes)
        }
    }

    /// The 8 kHz samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 / 8
    }
}

/// A mono 16-bit PCM WAV file of `samples` at `rate` (for tests and tools).
#[cfg(test)]
pub(crate) fn wav_mono(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<i16> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|n| {
                ((2.0 * std::f64::consts::PI * freq * n as f64 / f64::from(rate)).sin() * 10_000.0)
                    as i16
            })
            .collect()
    }

    fn power(samples: &[i16], freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in samples {
            let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    }

    #[test]
    fn every_supported_rate_becomes_8khz_with_the_tone_kept() {
        for rate in [8000, 16_000, 48_000] {
            let p = Prompt::from_wav(&wav_mono(&tone(440.0, rate, 1.0), rate)).unwrap();
            assert_eq!(p.samples().len(), 8000, "{rate} Hz");
            assert_eq!(p.duration_ms(), 1000);
            let s = &p.samples()[200..7800];
            assert!(power(s, 440.0) > 1000.0 * power(s, 1500.0), "{rate} Hz");
            let peak = s.iter().map(|v| i32::from(*v).abs()).max().unwrap();
            assert!(
                (9_000..=10_500).contains(&peak),
                "{rate} Hz: gain kept, peak {peak}"
            );
        }
    }

    /// An Ogg Opus file of `samples` (48 kHz, `channels` interleaved), with a pre-skip of
    /// 312 samples of silence before them, as encoders write it.
    fn ogg_opus(samples: &[i16], channels: u8) -> Vec<u8> {
        let layout = if channels == 2 {
            opus::Channels::Stereo
        } else {
            opus::Channels::Mono
        };
        let mut enc = opus::Encoder::new(48_000, layout, opus::Application::Audio).unwrap();
        let pre_skip = 312usize;
        let n = usize::from(channels);
        let mut input = vec![0i16; pre_skip * n];
        input.extend_from_slice(samples);
        let frames = input.len().div_ceil(960 * n);
        input.resize(frames * 960 * n, 0);
        let mut out = Vec::new();
        let mut w = ogg::PacketWriter::new(&mut out);
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(channels);
        head.extend_from_slice(&(pre_skip as u16).to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.push(0);
        w.write_packet(head, 7, ogg::PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&4u32.to_le_bytes());
        tags.extend_from_slice(b"test");
        tags.extend_from_slice(&0u32.to_le_bytes());
        w.write_packet(tags, 7, ogg::PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let total = (pre_skip + samples.len() / n) as u64;
        for (i, frame) in input.chunks(960 * n).enumerate() {
            let mut packet = vec![0u8; 4000];
            let len = enc.encode(frame, &mut packet).unwrap();
            packet.truncate(len);
            let last = i + 1 == frames;
            let granule = if last { total } else { ((i + 1) * 960) as u64 };
            let info = if last {
                ogg::PacketWriteEndInfo::EndStream
            } else {
                ogg::PacketWriteEndInfo::NormalPacket
            };
            w.write_packet(packet, 7, info, granule).unwrap();
        }
        drop(w);
        out
    }

    #[test]
    fn ogg_opus_prompts_play_at_8khz_with_their_tone_and_length() {
        for channels in [1u8, 2] {
            let mono = tone(600.0, 48_000, 1.0);
            let samples: Vec<i16> = mono
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, usize::from(channels)))
                .collect();
            let file = ogg_opus(&samples, channels);
            let p = Prompt::from_bytes(&file).unwrap();
            // Pre-skip dropped and the end trimmed: one second, to within a frame.
            assert!(
                (7_900..=8_000).contains(&p.samples().len()),
                "{channels} ch: {} samples",
                p.samples().len()
            );
            let s = &p.samples()[800..7200];
            assert!(
                power(s, 600.0) > 100.0 * power(s, 800.0),
                "{channels} ch: the 600 Hz tone, not another"
            );
        }
    }

    #[test]
    fn files_that_are_not_ogg_opus_are_refused_with_the_reason() {
        let mut vorbis = ogg_opus(&tone(600.0, 48_000, 0.1), 1);
        // The identification header names another codec.
        let at = vorbis.windows(8).position(|w| w == b"OpusHead").unwrap();
        vorbis[at..at + 8].copy_from_slice(b"vorbisXX");
        assert!(matches!(
            Prompt::from_bytes(&vorbis),
            Err(PromptError::Format(_))
        ));
        assert!(matches!(
            Prompt::from_bytes(b"OggS not really"),
            Err(PromptError::Format(_))
        ));
    }

    #[test]
    fn tones_above_the_telephone_band_do_not_fold_back() {
        // 5 kHz at 16 kHz would alias to 3 kHz without the filter.
        let p = Prompt::from_wav(&wav_mono(&tone(5000.0, 16_000, 1.0), 16_000)).unwrap();
        let s = &p.samples()[200..7800];
        let peak = s.iter().map(|v| i32::from(*v).abs()).max().unwrap();
        assert!(peak < 300, "aliased energy {peak}");
    }

    #[test]
    fn files_the_switch_cannot_play_are_refused_with_the_reason() {
        assert!(matches!(
            Prompt::from_wav(b"nope"),
            Err(PromptError::Format(_))
        ));
        let mut stereo = wav_mono(&[0; 100], 8000);
        stereo[22] = 2;
        assert!(
            matches!(Prompt::from_wav(&stereo), Err(PromptError::Unsupported(m)) if m.contains("channels"))
        );
        let mut odd_rate = wav_mono(&[0; 100], 8000);
        odd_rate[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        assert!(
            matches!(Prompt::from_wav(&odd_rate), Err(PromptError::Unsupported(m)) if m.contains("44100"))
        );
        let mut truncated = wav_mono(&[0; 100], 8000);
        truncated.truncate(100);
        assert!(matches!(
            Prompt::from_wav(&truncated),
            Err(PromptError::Format(_))
        ));
    }
}
