//! `waswitch sim`: an emulator of Meta's side of WhatsApp Business Calling, so a business
//! can rehearse its integration without Meta and the tests have a WhatsApp side.
//!
//! It serves the Graph API with Meta's validation and errors ([`graph`]), sends signed
//! webhooks in Meta's shapes ([`webhooks`]), and plays WhatsApp users with real WebRTC
//! media ([`user`]). [`load`] places scripted and load-test calls against a switch;
//! [`users`] answers the business's calls and permission requests as users would.
//! [`pool`] carries many users' media on a few threads (load runs).
//! [`meta_sip`] plays Meta's SIP interface (numbers in SIP mode), its users' media SDES-SRTP
//! ([`sdes_user`]).

pub mod graph;
pub mod load;
pub mod meta_sip;
pub mod pool;
pub mod sdes_user;
pub mod user;
pub mod users;
pub mod webhooks;
