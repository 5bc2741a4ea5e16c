//! waswitch: a carrier-grade softswitch between WhatsApp Business Calling and the SIP voice
//! systems businesses already run.
//!
//! Planes, from the leaves up (a module never imports one above it):
//! - [`sip`]: sans-IO SIP (no sockets, no clock);
//! - [`media`]: media-plane resources;
//! - [`store`]: the system of record (SQLite or PostgreSQL) and the CDR writer;
//! - [`call`]: one supervised actor tree per call, the registry, the root supervisor;
//! - [`api`]: HTTP (health, readiness, metrics);
//! - [`node`]: one running switch and its lifecycle;
//! - [`config`] and [`telemetry`] serve all of them; [`number`] (E.164 numbers) is a leaf
//!   every plane may use.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod audit;
pub mod call;
pub mod clock;
pub mod config;
pub mod media;
pub mod meta;
pub mod node;
pub mod number;
pub mod once;
pub mod permission;
pub mod routing;
pub mod sdp;
pub mod sim;
pub mod sip;
pub mod store;
pub mod telemetry;
