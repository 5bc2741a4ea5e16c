//! Media plane resources.
//!
//! `media` owns what carries audio: today the RTP port pool every anchored leg draws from.
//! It never blocks on the network from a call's point of view and never holds a lock on a
//! per-packet path.

pub mod ports;
