//! Call control: the verbs that drive a call between the customer and the agent, and the
//! sans-IO engine that runs them.
//!
//! The verbs are the one vocabulary of call control: the configuration's IVR menus compile
//! to them, and HTTP apps and queues speak them too. A [`Script`] is a set of named nodes,
//! each a list of [`Verb`]s; the [`Engine`](engine::Engine) runs one script for one call.
//! It takes events (the call answered, a prompt finished, a digit, a recording ended, a
//! dial ended, time) and returns [`Command`](engine::Command)s for the call's actors
//! (answer toward Meta, play from the media shard, record, dial, send a message). It never
//! touches a socket, a clock or a packet: prompts play in the media shards, and time is an
//! input, so every rule here is tested with a virtual clock.
//!
//! - [`verb`]: the vocabulary (verbs, destinations, the script).
//! - [`app`]: HTTP apps' JSON verbs, checked and compiled to a script.
//! - [`engine`]: the state machine that runs a script.
//! - [`schedule`]: business hours (Meta's `call_hours` shape), open or closed at a moment.
//! - [`queue`]: agents' presence and the queue strategies that pick who is offered a call.

pub mod app;
pub mod engine;
pub mod queue;
pub mod schedule;
pub mod verb;

pub use engine::{Command, Engine, Event, Facts, Fetch, Outcome};
pub use verb::{Condition, Destination, Gather, Node, Play, Record, Script, Verb};
