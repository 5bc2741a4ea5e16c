//! SIP, sans-IO: message-level types and logic with no sockets and no clock.
//!
//! `sip` owns the SIP vocabulary of the switch. It never touches the network, a timer or an
//! actor; the transport driver and the call layer feed it input and act on its output.

pub(crate) mod auth;
pub(crate) mod b2bua;
pub mod build;
pub(crate) mod core;
pub(crate) mod dialog;
pub mod header;
pub mod msg;
pub(crate) mod overload;
pub(crate) mod registrar;
pub(crate) mod source;
pub(crate) mod transport;
pub(crate) mod trunk;
pub(crate) mod txn;
pub(crate) mod uri;
pub mod validate;
