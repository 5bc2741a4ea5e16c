//! Call recording: two-channel 16-bit WAV at 8 kHz, side A on the left, side B on the
//! right, written incrementally by a writer thread and finalised atomically. A one-channel
//! recording (a voicemail) has side A alone.
//!
//! The shard hands each accepted G.711 packet's audio to the recorder as a fixed-size frame
//! moved through a bounded, preallocated queue (no allocation, never blocking: a full queue
//! drops the frame and counts it). The writer places samples on one timeline by RTP timestamp (the first packet
//! of each side anchors that side at its arrival time), fills gaps with silence, and writes
//! `<name>.wav.part`. When the recorder is closed (the call ended, however it ended) it
//! writes what is left, fixes the header sizes, syncs and renames the file to `<name>.wav`.
//! The recording spans from the first media packet to the end of the last.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
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

/// Writes a 44-byte PCM WAV header for `data_len` octets of 16-bit audio at 8 kHz.
pub(crate) fn wav_header(data_len: u32, channels: u16) -> [u8; 44] {
    let mut h = [0u8; 44];
    let block = channels * 2;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(RATE * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

impl Recorder {
    /// Starts recording both sides to `path` (written as `path` + `.part` until closed).
    pub(crate) fn start(path: &Path) -> std::io::Result<Recorder> {
        Self::start_with(path, 2, None)
    }

    /// Starts recording both sides to `path`; `on_done` hears how it ended, from the
    /// writer's thread, once the file is final.
    pub(crate) fn start_stereo(path: &Path, on_done: Done) -> std::io::Result<Recorder> {
        Self::start_with(path, 2, Some(on_done))
    }

    /// Starts recording side A alone to `path`; `on_done` hears how it ended, from the
    /// writer's thread, once the file is final.
    pub(crate) fn start_mono(path: &Path, on_done: Done) -> std::io::Result<Recorder> {
        Self::start_with(path, 1, Some(on_done))
    }

    fn start_with(path: &Path, channels: u16, on_done: Option<Done>) -> std::io::Result<Recorder> {
        let part = part_path(path);
        let mut file = File::create(&part)?;
        file.write_all(&wav_header(0, channels))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let final_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || write_loop(rx, file, &part, &final_path, channels))?;
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

fn write_samples(
    file: &mut File,
    samples: &[[i16; 2]],
    channels: u16,
    bytes: &mut u64,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(samples.len() * 2 * usize::from(channels));
    for [l, r] in samples {
        out.extend_from_slice(&l.to_le_bytes());
        if channels > 1 {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }
    file.write_all(&out)?;
    *bytes += out.len() as u64;
    Ok(())
}

fn write_loop(
    rx: Receiver<Frame>,
    mut file: File,
    part: &Path,
    path: &Path,
    channels: u16,
) -> std::io::Result<PathBuf> {
    let mut timeline = Timeline {
        start: None,
        anchors: [None, None],
        written: 0,
        pending: VecDeque::new(),
        end: 0,
    };
    let mut bytes = 0u64;
    // The queue ends when the recorder closes it.
    while let Ok(f) = rx.recv() {
        timeline.place(&f);
        if timeline.pending.len() as u64 > 2 * HOLD_BACK {
            let done = timeline.settled(HOLD_BACK);
            write_samples(&mut file, &done, channels, &mut bytes)?;
        }
    }
    let rest = timeline.settled(0);
    write_samples(&mut file, &rest, channels, &mut bytes)?;
    let data = u32::try_from(bytes).unwrap_or(u32::MAX - 36);
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&wav_header(data, channels))?;
    file.sync_all()?;
    drop(file);
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
