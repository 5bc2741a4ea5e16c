//! Call recording: two channels at 8 kHz, side A on the left, side B on the right (or the
//! other way round, so a call's customer is always on the left), as Ogg
//! Opus (RFC 7845; a tenth of WAV's size) or 16-bit WAV, written incrementally by a writer
//! thread and finalised atomically. A one-channel recording (a voicemail) has side A alone.
//!
//! The shard hands each accepted G.711 packet's audio to the recorder as a fixed-size frame
//! moved through a bounded, preallocated queue (no allocation, never blocking: a full queue
//! drops the frame and counts it). The writer places samples on one timeline by RTP timestamp (the first packet
//! of each side anchors that side at its arrival time), fills gaps with silence, and writes
//! `<name>.part`. When the recorder is closed (the call ended, however it ended) it writes
//! what is left (the WAV header's sizes, the Ogg stream's last page), syncs and renames the
//! file to `<name>`.
//! The recording spans from the first media packet to the end of the last.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

/// Sample rate of recordings.
pub(crate) const RATE: u32 = 8000;
/// Most samples in one frame (30 ms at 8 kHz; longer packets are cut).
pub(crate) const MAX_FRAME: usize = 240;
/// Frames queued toward the writer (preallocated: 256 × ~500 octets per recording).
const QUEUE: usize = 256;
/// Samples kept back for late packets before they are written (0.5 s).
const HOLD_BACK: u64 = RATE as u64 / 2;

/// How a recording is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Ogg Opus (RFC 7845), at [`OPUS_BITRATE`] per channel.
    #[default]
    OggOpus,
    /// 16-bit linear PCM WAV.
    Wav,
}

impl Format {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::OggOpus => "ogg",
            Format::Wav => "wav",
        }
    }

    /// The media type a download is served as.
    pub fn mime(self) -> &'static str {
        match self {
            Format::OggOpus => "audio/ogg; codecs=opus",
            Format::Wav => "audio/wav",
        }
    }

    /// The configuration's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OggOpus => "ogg",
            Format::Wav => "wav",
        }
    }
}

/// Opus bit rate per channel of an Ogg Opus recording (narrowband speech).
pub const OPUS_BITRATE: i32 = 12_000;
/// Samples per channel in one Opus frame of a recording (20 ms at 8 kHz).
const OPUS_FRAME: usize = 160;
/// The Ogg stream's serial number (one stream per file).
const OGG_SERIAL: u32 = 0x7761_7377;

/// Audio of one packet of one side.
#[derive(Clone, Copy)]
pub(crate) struct Frame {
    /// 0: side A (left), 1: side B (right).
    pub side: u8,
    /// RTP timestamp of the first sample.
    pub timestamp: u32,
    /// When the packet arrived.
    pub arrival: Instant,
    /// Samples used in `samples`.
    pub len: u16,
    /// Linear samples.
    pub samples: [i16; MAX_FRAME],
}

/// The sending end of a recording, held by the shard. Frames are moved through a
/// preallocated queue (boxing them would allocate per packet on the shard); the recording
/// ends when this end is closed or dropped, which disconnects the queue.
pub(crate) struct Recorder {
    tx: Option<SyncSender<Frame>>,
    /// Told the final path (or the failure) once the file is finalised.
    on_done: Option<Done>,
    dropped: u64,
    writer: Option<std::thread::JoinHandle<std::io::Result<PathBuf>>>,
}

/// Called with the recording's final path, or why there is none, once it is finalised.
pub(crate) type Done = Box<dyn FnOnce(std::io::Result<PathBuf>) + Send>;

impl Recorder {
    /// Starts recording both sides to `path` as WAV (written as `path` + `.part` until
    /// closed).
    #[cfg(test)]
    pub(crate) fn start(path: &Path) -> std::io::Result<Recorder> {
        Self::start_with(path, 2, Format::Wav, false, None)
    }

    /// Starts recording both sides to `path` in `format`; `on_done` hears how it ended,
    /// from the writer's thread, once the file is final.
    pub(crate) fn start_stereo(
        path: &Path,
        format: Format,
        swap: bool,
        on_done: Done,
    ) -> std::io::Result<Recorder> {
        Self::start_with(path, 2, format, swap, Some(on_done))
    }

    /// Starts recording side A alone to `path` as WAV; `on_done` hears how it ended, from
    /// the writer's thread, once the file is final.
    pub(crate) fn start_mono(path: &Path, on_done: Done) -> std::io::Result<Recorder> {
        Self::start_with(path, 1, Format::Wav, false, Some(on_done))
    }

    fn start_with(
        path: &Path,
        channels: u16,
        format: Format,
        swap: bool,
        on_done: Option<Done>,
    ) -> std::io::Result<Recorder> {
        let part = part_path(path);
        let sink = Sink::create(&part, channels, format)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let final_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || write_loop(rx, sink, &part, &final_path, channels, swap))?;
        Ok(Recorder {
            tx: Some(tx),
            on_done,
            dropped: 0,
            writer: Some(writer),
        })
    }

    /// Queues a packet's audio; drops it (counted) when the writer is behind.
    pub(crate) fn push(&mut self, frame: Frame) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    /// Ends the recording and waits for the file; its final path.
    #[cfg(test)]
    pub(crate) fn close_and_wait(mut self) -> std::io::Result<PathBuf> {
        self.finish(true)
            .unwrap_or_else(|| Err(std::io::Error::other("recorder already closed")))
    }

    fn finish(&mut self, wait: bool) -> Option<std::io::Result<PathBuf>> {
        // Disconnecting never blocks the shard; the writer finishes what is queued.
        self.tx = None;
        if self.dropped > 0 {
            tracing::warn!(
                frames = self.dropped,
                "recording frames dropped: the writer fell behind"
            );
        }
        let writer = self.writer.take()?;
        if let Some(done) = self.on_done.take() {
            // Someone waits for the file: a thread of its own joins the writer (the shard
            // never blocks on it).
            let spawned =
                std::thread::Builder::new()
                    .name("recorder-done".into())
                    .spawn(move || {
                        done(writer.join().unwrap_or_else(|_| {
                            Err(std::io::Error::other("recorder thread panicked"))
                        }))
                    });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "recording's end not reported");
            }
            return None;
        }
        if wait {
            Some(
                writer
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("recorder thread panicked"))),
            )
        } else {
            None
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.finish(false);
        }
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// One side's place on the timeline.
#[derive(Clone, Copy)]
struct Anchor {
    /// Sample offset (from the recording's first packet) of RTP timestamp `ts`.
    offset: u64,
    ts: u32,
}

struct Timeline {
    start: Option<Instant>,
    anchors: [Option<Anchor>; 2],
    /// Sample offset of `pending[0]`.
    written: u64,
    /// Interleaved L/R samples not written yet.
    pending: VecDeque<[i16; 2]>,
    /// One past the last sample placed.
    end: u64,
}

impl Timeline {
    fn place(&mut self, f: &Frame) {
        let start = *self.start.get_or_insert(f.arrival);
        let side = usize::from(f.side.min(1));
        let anchor = *self.anchors[side].get_or_insert_with(|| Anchor {
            offset: (f.arrival.saturating_duration_since(start).as_micros() as u64
                * u64::from(RATE))
                / 1_000_000,
            ts: f.timestamp,
        });
        let delta = f.timestamp.wrapping_sub(anchor.ts);
        if delta > 0x8000_0000 {
            // Before this side's first packet: too late to place.
            return;
        }
        let at = anchor.offset + u64::from(delta);
        if at < self.written {
            return;
        }
        let len = usize::from(f.len).min(MAX_FRAME);
        let needed = (at - self.written) as usize + len;
        if self.pending.len() < needed {
            self.pending.resize(needed, [0, 0]);
        }
        let base = (at - self.written) as usize;
        for (i, s) in f.samples[..len].iter().enumerate() {
            self.pending[base + i][side] = *s;
        }
        self.end = self.end.max(at + len as u64);
    }

    /// Takes the samples that can no longer change (all but the last `keep`).
    fn settled(&mut self, keep: u64) -> Vec<[i16; 2]> {
        let horizon = self.end.saturating_sub(keep);
        let n = horizon
            .saturating_sub(self.written)
            .min(self.pending.len() as u64) as usize;
        self.written += n as u64;
        self.pending.drain(..n).collect()
    }
}

/// Where settled samples go: a WAV writer, or an Opus encoder feeding an Ogg stream.
enum Sink {
    Wav(hound::WavWriter<BufWriter<File>>),
    Ogg(Box<OggOpus>),
}

/// An Ogg Opus stream being written. One packet is held back, so the last one written can
/// end the stream.
struct OggOpus {
    writer: ogg::PacketWriter<'static, BufWriter<File>>,
    encoder: opus::Encoder,
    channels: usize,
    /// Interleaved samples of the frame being filled.
    frame: Vec<i16>,
    /// The encoded packet not written yet, and its granule position.
    held: Option<(Vec<u8>, u64)>,
    /// Samples per channel encoded so far, and how many of them are audio (not padding).
    encoded: u64,
    audio: u64,
    /// Encoder delay at 48 kHz.
    pre_skip: u64,
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Sink {
    fn create(part: &Path, channels: u16, format: Format) -> std::io::Result<Sink> {
        let file = BufWriter::new(File::create(part)?);
        match format {
            Format::Wav => {
                let spec = hound::WavSpec {
                    channels,
                    sample_rate: RATE,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                };
                Ok(Sink::Wav(
                    hound::WavWriter::new(file, spec).map_err(io_error)?,
                ))
            }
            Format::OggOpus => Ok(Sink::Ogg(Box::new(OggOpus::start(file, channels)?))),
        }
    }

    fn write(&mut self, samples: &[[i16; 2]], channels: u16) -> std::io::Result<()> {
        match self {
            Sink::Wav(w) => {
                for [l, r] in samples {
                    w.write_sample(*l).map_err(io_error)?;
                    if channels > 1 {
                        w.write_sample(*r).map_err(io_error)?;
                    }
                }
                Ok(())
            }
            Sink::Ogg(o) => o.write(samples),
        }
    }

    /// Writes what is left and flushes the file to disk.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Wav(mut w) => {
                w.flush().map_err(io_error)?;
                w.finalize().map_err(io_error)
            }
            Sink::Ogg(o) => o.finish(),
        }
    }
}

impl OggOpus {
    fn start(file: BufWriter<File>, channels: u16) -> std::io::Result<OggOpus> {
        let layout = if channels > 1 {
            opus::Channels::Stereo
        } else {
            opus::Channels::Mono
        };
        let mut encoder =
            opus::Encoder::new(RATE, layout, opus::Application::Voip).map_err(io_error)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE * i32::from(channels)))
            .map_err(io_error)?;
        // The delay is told at the encoder's rate; Ogg Opus counts it at 48 kHz.
        let lookahead = encoder.get_lookahead().map_err(io_error)?;
        let pre_skip = u64::try_from(lookahead).unwrap_or(0) * 48_000 / u64::from(RATE);
        let mut writer = ogg::PacketWriter::new(file);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1);
        head.push(channels as u8);
        head.extend_from_slice(&(pre_skip as u16).to_le_bytes());
        head.extend_from_slice(&RATE.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        writer.write_packet(head, OGG_SERIAL, ogg::PacketWriteEndInfo::EndPage, 0)?;
        let vendor = concat!("waswitch ", env!("CARGO_PKG_VERSION"));
        let mut tags = Vec::with_capacity(16 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes());
        writer.write_packet(tags, OGG_SERIAL, ogg::PacketWriteEndInfo::EndPage, 0)?;
        let channels = usize::from(channels);
        Ok(OggOpus {
            writer,
            encoder,
            channels,
            frame: Vec::with_capacity(OPUS_FRAME * channels),
            held: None,
            encoded: 0,
            audio: 0,
            pre_skip,
        })
    }

    fn write(&mut self, samples: &[[i16; 2]]) -> std::io::Result<()> {
        for pair in samples {
            self.frame.extend_from_slice(&pair[..self.channels]);
            if self.frame.len() == OPUS_FRAME * self.channels {
                self.audio += OPUS_FRAME as u64;
                self.encode()?;
            }
        }
        Ok(())
    }

    /// Encodes the full frame, writing the packet held before it.
    fn encode(&mut self) -> std::io::Result<()> {
        let mut packet = vec![0u8; 1275];
        let len = self
            .encoder
            .encode(&self.frame, &mut packet)
            .map_err(io_error)?;
        packet.truncate(len);
        self.frame.clear();
        self.encoded += OPUS_FRAME as u64;
        // RFC 7845: every sample the packets decode to, the encoder's delay included.
        let granule = self.encoded * 48_000 / u64::from(RATE);
        if let Some((held, at)) = self.held.replace((packet, granule)) {
            self.writer.write_packet(
                held,
                OGG_SERIAL,
                ogg::PacketWriteEndInfo::NormalPacket,
                at,
            )?;
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        // The last frame padded with silence, and silence after it until the encoder's
        // delay is flushed (the audio's end decodes too); the last granule position says
        // where the audio ends, so players trim the rest.
        let partial = (self.frame.len() / self.channels) as u64;
        self.audio += partial;
        let scale = 48_000 / u64::from(RATE);
        let end = self.pre_skip + self.audio * scale;
        while !self.frame.is_empty() || self.encoded * scale < end || self.held.is_none() {
            self.frame.resize(OPUS_FRAME * self.channels, 0);
            self.encode()?;
        }
        if let Some((last, _)) = self.held.take() {
            self.writer
                .write_packet(last, OGG_SERIAL, ogg::PacketWriteEndInfo::EndStream, end)?;
        }
        let mut file = self.writer.into_inner();
        file.flush()?;
        Ok(())
    }
}

fn write_loop(
    rx: Receiver<Frame>,
    mut sink: Sink,
    part: &Path,
    path: &Path,
    channels: u16,
    swap: bool,
) -> std::io::Result<PathBuf> {
    let mut timeline = Timeline {
        start: None,
        anchors: [None, None],
        written: 0,
        pending: VecDeque::new(),
        end: 0,
    };
    // The queue ends when the recorder closes it.
    while let Ok(mut f) = rx.recv() {
        if swap {
            f.side = 1 - f.side.min(1);
        }
        timeline.place(&f);
        if timeline.pending.len() as u64 > 2 * HOLD_BACK {
            let done = timeline.settled(HOLD_BACK);
            sink.write(&done, channels)?;
        }
    }
    let rest = timeline.settled(0);
    sink.write(&rest, channels)?;
    sink.finish()?;
    File::open(part)?.sync_all()?;
    std::fs::rename(part, path)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(side: u8, ts: u32, arrival: Instant, value: i16) -> Frame {
        Frame {
            side,
            timestamp: ts,
            arrival,
            len: 160,
            samples: [value; MAX_FRAME],
        }
    }

    #[test]
    fn two_sides_land_on_their_channels_on_one_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        let mut rec = Recorder::start(&path).unwrap();
        let t0 = Instant::now();
        // A from the start, B joining 100 ms later; one of A's packets lost.
        for i in 0..50u32 {
            if i != 10 {
                rec.push(frame(
                    0,
                    1000 + i * 160,
                    t0 + Duration::from_millis(u64::from(i) * 20),
                    100,
                ));
            }
        }
        for i in 0..45u32 {
            rec.push(frame(
                1,
                77 + i * 160,
                t0 + Duration::from_millis(100 + u64::from(i) * 20),
                -200,
            ));
        }
        assert!(
            part_path(&path).exists(),
            "written as .part while recording"
        );
        let done = rec.close_and_wait().unwrap();
        assert_eq!(done, path);
        assert!(!part_path(&path).exists());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        let data_len = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
        assert_eq!(data_len, bytes.len() - 44);
        let frames: Vec<(i16, i16)> = bytes[44..]
            .chunks_exact(4)
            .map(|c| {
                (
                    i16::from_le_bytes([c[0], c[1]]),
                    i16::from_le_bytes([c[2], c[3]]),
                )
            })
            .collect();
        // 50 packets of A = 8000 samples; B ends at 100 ms + 45 × 20 ms = 1 s as well.
        assert_eq!(frames.len(), 8000);
        assert_eq!(frames[0], (100, 0), "B not there yet");
        assert_eq!(
            frames[10 * 160 + 5],
            (0, -200),
            "A's lost packet is silence"
        );
        assert_eq!(frames[4000], (100, -200));
    }

    #[test]
    fn a_dropped_recorder_still_finalises_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropped.wav");
        {
            let mut rec = Recorder::start(&path).unwrap();
            rec.push(frame(0, 0, Instant::now(), 1));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            assert!(Instant::now() < deadline, "never finalised");
            std::thread::sleep(Duration::from_millis(10));
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 160 * 4);
    }
}
