//! The words the media plane shares with the calls it serves: which side of a pair, which
//! sources a leg accepts, and what a leg's peer receives and sends (read off its SDP).

use std::net::SocketAddr;

use super::transcode::Codec;
use crate::sdp::{Audio, Direction};

/// Which side of a bridged pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first leg (the caller's side of a SIP call, the WhatsApp side of a WhatsApp call).
    A,
    /// The second leg.
    B,
}

impl Side {
    pub(crate) fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Which packets a leg accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePolicy {
    /// Only from the address in the peer's SDP.
    Strict,
    /// From the first source seen (which may differ from the SDP, behind NAT), then only
    /// from it.
    Latch,
}

/// Where a leg's peer receives, and what it sends, from its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// RTP address (`None`: the peer stopped the stream, e.g. hold with 0.0.0.0).
    pub addr: Option<SocketAddr>,
    /// RTCP shares the RTP port.
    pub rtcp_mux: bool,
    /// Clock rate of the codec (for jitter in milliseconds).
    pub clock: u32,
    /// The peer's telephone-event payload type.
    pub dtmf_pt: Option<u8>,
    /// The clock of its telephone-events (RFC 4733 has it equal the audio clock; some
    /// peers pair 8000 with Opus's 48000). Event durations are counted in it.
    pub dtmf_clock: u32,
    /// The payload type of the codec the peer receives (prompts are encoded in it).
    pub codec_pt: Option<u8>,
    /// That codec, when the media plane speaks it (legs of different codecs are
    /// transcoded; equal codecs are relayed untouched).
    pub codec: Option<Codec>,
    /// The peer is expected to send (sendrecv/sendonly): silence counts toward the timeout.
    pub sends: bool,
}

impl Remote {
    /// What `audio` (a peer's `m=audio` section) says about its media. `transcoded`: the
    /// other side of the pair speaks its own codec, so this side's codec is named and the
    /// media plane transcodes when the two differ; otherwise both sides settled on one codec
    /// by offer/answer and packets are relayed untouched.
    pub fn from_sdp(audio: &Audio, transcoded: bool) -> Remote {
        Remote {
            addr: audio.target,
            rtcp_mux: audio.rtcp_mux,
            clock: audio.codec().map_or(8000, |c| c.clock),
            dtmf_pt: audio.telephone_event(),
            dtmf_clock: audio.telephone_event_format().map_or(8000, |f| f.clock),
            codec_pt: audio.codec().map(|c| c.pt),
            codec: if transcoded {
                audio.codec().and_then(|c| Codec::from_name(&c.name))
            } else {
                None
            },
            sends: matches!(audio.direction, Direction::SendRecv | Direction::SendOnly),
        }
    }
}
