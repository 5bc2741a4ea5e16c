//! waswitch: a carrier-grade softswitch between WhatsApp Business Calling and the SIP voice
//! systems businesses already run.
//!
//! Modules, from the leaves up (a module never imports one above it, and
//! `tests/architecture.rs` fails on any circle between them; `ARCHITECTURE.md` is the map):
//! - leaves: [`sdp`] (offer/answer, anchors), [`number`] (E.164), [`audit`] (the hash-chained
//!   trail), [`clock`], [`once`], [`tasks`] (owned background work), [`control`] (call control:
//!   the verbs and the sans-IO engine that runs them), [`telemetry`] (logs and the
//!   metric catalogue);
//! - [`media`]: the media plane (shards, relay, WebRTC, codecs, recording);
//! - [`sip`]: sans-IO SIP, and its tokio driver (`sip::transport`);
//! - [`config`]: the typed configuration, validated once;
//! - [`meta`]: Meta's Cloud API (Graph client, webhook payloads and signatures);
//! - [`store`]: the system of record (SQLite or PostgreSQL) and the CDR writer;
//! - [`permission`]: call permissions (the sans-IO state machine and its service);
//! - [`routing`]: which trunk a call comes from and goes to;
//! - [`call`]: one supervised actor tree per call, its plan, the registry;
//! - `api`: HTTP (health, readiness, metrics, webhooks, the REST API);
//! - [`sim`]: the Meta emulator (a client of the switch, as Meta is);
//! - [`node`]: one running switch, its lifecycle and its root supervisor.

// Unsafe code lives in one module (`media::batch`, the batched socket calls), which allows it
// with a SAFETY comment on every block; anywhere else it does not compile.
#![deny(unsafe_code)]
#![deny(missing_docs, unreachable_pub, unused_qualifications)]

pub(crate) mod api;
pub mod audit;
pub mod call;
pub mod clock;
pub mod config;
pub mod control;
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
pub mod tasks;
pub mod telemetry;
