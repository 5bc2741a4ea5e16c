//! Media plane resources.
//!
//! `media` owns what carries audio: the RTP port pool every anchored leg draws from, RTP and
//! RTCP packet views, and the G.711 codecs.
//! It never blocks on the network from a call's point of view and never holds a lock on a
//! per-packet path.

pub(crate) mod batch;
pub mod dtmf;
pub mod g711;
pub mod plane;
pub mod ports;
pub(crate) mod prompt;
pub mod quality;
pub mod record;
pub mod rtcp;
pub mod rtp;
mod shard;
mod smoother;
pub mod srtp;
pub mod stream;
pub mod transcode;
pub mod types;
pub mod webrtc;
