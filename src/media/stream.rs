//! Media streams: a call's audio, both ways, over a WebSocket to a voice bot.
//!
//! The call's media shard does the audio work: the customer's packets are decoded and
//! handed to the stream in the stream's format (μ-law at 8 kHz, or 16-bit linear PCM at
//! 16 kHz), and the bot's audio goes into a playout buffer the shard reads every 20 ms,
//! encoded to the customer's codec. Between the shard and the WebSocket connection (a task
//! on the async runtime) run two bounded queues of fixed-size frames: no allocation, no
//! lock, and a full queue drops a frame (counted) rather than stall either side.
//!
//! The rest is sans-IO: [`ws`] is the WebSocket client's framing, [`wire`] the two wire
//! formats (Twilio Media Streams' JSON messages, and the native one with binary audio),
//! [`session`] the rules of one stream (what the bot may send, how fast, how long it may
//! stay silent), [`audio`] the resampling between 8 and 16 kHz.

pub mod audio;
pub mod session;
pub mod wire;
pub mod ws;

use std::time::Instant;

/// Bytes of the longest frame: 20 ms of 16-bit PCM at 16 kHz.
pub const FRAME_BYTES: usize = 640;
/// Frames the bot's queue into the shard holds (1.28 s at 20 ms a frame; the shard empties
/// it every 20 ms).
pub const DOWN_FRAMES: usize = 64;
/// Frames the customer's queue toward the connection holds.
pub const UP_FRAMES: usize = 64;

/// How a stream carries audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Twilio Media Streams: JSON text messages, μ-law at 8 kHz in base64.
    Twilio,
    /// Native: JSON text messages for events, binary messages of 16-bit little-endian PCM
    /// at 16 kHz for audio.
    L16,
}

impl Format {
    /// Sample rate of the stream's audio.
    pub fn rate(self) -> u32 {
        match self {
            Format::Twilio => 8000,
            Format::L16 => 16_000,
        }
    }

    /// Bytes of 20 ms of the stream's audio.
    pub fn frame_bytes(self) -> usize {
        match self {
            Format::Twilio => 160,
            Format::L16 => 640,
        }
    }

    /// Bytes of one sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            Format::Twilio => 1,
            Format::L16 => 2,
        }
    }

    /// Bytes per millisecond of the stream's audio.
    pub fn bytes_per_ms(self) -> usize {
        self.frame_bytes() / 20
    }

    /// Its name in configuration and the CDR.
    pub fn name(self) -> &'static str {
        match self {
            Format::Twilio => "twilio",
            Format::L16 => "l16",
        }
    }

    /// The format of a configuration name.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "twilio" => Some(Format::Twilio),
            "l16" | "native" => Some(Format::L16),
            _ => None,
        }
    }
}

/// A piece of audio in the stream's format, with when it reached the switch.
#[derive(Clone, Copy)]
pub struct Frame {
    /// Bytes used of `data`.
    pub len: u16,
    /// The audio.
    pub data: [u8; FRAME_BYTES],
    /// When it reached the switch (the customer's packet, or the bot's message).
    pub arrived: Instant,
}

impl Frame {
    /// A frame of `bytes` (cut to [`FRAME_BYTES`]).
    pub fn new(bytes: &[u8], arrived: Instant) -> Frame {
        let len = bytes.len().min(FRAME_BYTES);
        let mut data = [0u8; FRAME_BYTES];
        data[..len].copy_from_slice(&bytes[..len]);
        Frame {
            len: len as u16,
            data,
            arrived,
        }
    }

    /// The audio.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.len)
    }
}

/// From the shard to the connection. (Frames travel by value in a queue sized once:
/// boxing them would allocate per frame.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Up {
    /// 20 ms of the customer's audio.
    Audio(Frame),
    /// The audio queued before mark `id` has played (or was cleared).
    Played(u32),
    /// A frame of the bot's audio took this long from reaching the switch to its first
    /// packet toward the customer (timed for frames that found the playout buffer holding
    /// no more than its prefill and a frame: the switch's share, not a bot's queue).
    Latency(std::time::Duration),
    /// The shard's buffer was full: this many of the bot's bytes were dropped.
    Overflow(u32),
}

/// From the connection to the shard (frames by value, as [`Up`]).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Down {
    /// The bot's audio, to play after what is queued.
    Audio(Frame),
    /// Report [`Up::Played`] once the audio queued so far has played.
    Mark(u32),
    /// Empty the buffer (barge-in); pending marks are reported played.
    Clear,
}

/// What the shard needs to run a stream on one side of a pair.
pub struct Tap {
    /// The stream's format.
    pub format: Format,
    /// Toward the connection.
    pub up: tokio::sync::mpsc::Sender<Up>,
    /// From the connection.
    pub down: std::sync::mpsc::Receiver<Down>,
    /// The most of the bot's audio buffered, milliseconds (more is dropped).
    pub max_buffer_ms: u32,
    /// Audio buffered before playout starts (and again after it ran dry), milliseconds:
    /// absorbs the bot's jitter.
    pub prefill_ms: u32,
    /// The stream's number in its call: stopping it stops this one, not a later one.
    pub seq: u64,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("format", &self.format).finish()
    }
}

/// The connection's ends of a new stream's queues, and the shard's.
pub fn queues(
    format: Format,
    max_buffer_ms: u32,
    prefill_ms: u32,
    seq: u64,
) -> (
    Tap,
    tokio::sync::mpsc::Receiver<Up>,
    std::sync::mpsc::SyncSender<Down>,
) {
    let (up_tx, up_rx) = tokio::sync::mpsc::channel(UP_FRAMES);
    let (down_tx, down_rx) = std::sync::mpsc::sync_channel(DOWN_FRAMES);
    (
        Tap {
            format,
            up: up_tx,
            down: down_rx,
            max_buffer_ms,
            prefill_ms,
            seq,
        },
        up_rx,
        down_tx,
    )
}
