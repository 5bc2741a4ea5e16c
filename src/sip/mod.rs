//! SIP, sans-IO: message-level types and logic with no sockets and no clock.
//!
//! `sip` owns the SIP vocabulary of the switch. It never touches the network, a timer or an
//! actor; the transport driver and the call layer feed it input and act on its output.

pub mod auth;
pub mod b2bua;
pub mod build;
pub mod core;
pub mod dialog;
pub mod header;
pub mod msg;
pub mod overload;
pub mod source;
pub mod transport;
pub mod trunk;
pub mod txn;
pub mod uri;
pub mod validate;
