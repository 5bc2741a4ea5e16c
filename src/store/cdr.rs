//! The CDR aggregate: one call detail record per call, and its repository.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Who started the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A WhatsApp user called the business.
    UserInitiated,
    /// The business called a WhatsApp user (with the user's permission).
    BusinessInitiated,
    /// A SIP call routed from one trunk to another (no WhatsApp leg).
    SipTransit,
}

/// How a call ended, as counted in `waswitch_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// The called party answered.
    Answered,
    /// The call ended before the called party answered (cancelled, rejected, no answer).
    Unanswered,
    /// A part of the switch failed and the call was torn down.
    Failed,
}

/// Which side ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupParty {
    /// The WhatsApp user.
    Customer,
    /// The business side (agent, PBX, trunk, API).
    Business,
    /// The calling side of a SIP transit call.
    Caller,
    /// The called side of a SIP transit call.
    Callee,
    /// The switch itself (failure, shutdown, timeout).
    Switch,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored and exported spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::Corrupt(format!(
                        "{} {other:?} in the cdrs table", stringify!($ty)
                    ))),
                }
            }
        }
    };
}

text_enum!(Direction { UserInitiated => "user_initiated", BusinessInitiated => "business_initiated", SipTransit => "sip_transit" });
text_enum!(CallOutcome { Answered => "answered", Unanswered => "unanswered", Failed => "failed" });
text_enum!(HangupParty { Customer => "customer", Business => "business", Caller => "caller", Callee => "callee", Switch => "switch" });

/// A call detail record. Times are Unix epoch milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// The switch's id of the call (one CDR per call id).
    pub call_id: String,
    /// The node that carried the call.
    pub node_id: String,
    /// Who started the call.
    pub direction: Direction,
    /// The business's WhatsApp number (E.164 digits).
    pub business_number: Option<String>,
    /// The customer's WhatsApp id.
    pub customer_wa_id: Option<String>,
    /// Meta's id of the WhatsApp leg.
    pub wa_call_id: Option<String>,
    /// SIP Call-ID of the business leg.
    pub sip_call_id: Option<String>,
    /// Trunk the business leg used.
    pub trunk: Option<String>,
    /// When the call reached the switch.
    pub offered_at: i64,
    /// When the called party started ringing.
    pub ringing_at: Option<i64>,
    /// When the called party answered.
    pub answered_at: Option<i64>,
    /// When the call ended.
    pub ended_at: i64,
    /// Talk time: answer to end, 0 when unanswered.
    pub duration_ms: i64,
    /// How the call ended.
    pub outcome: CallOutcome,
    /// Which side ended it.
    pub hangup_by: HangupParty,
    /// The end cause (e.g. `normal_clearing`, `cancelled`, `shutdown`, `internal_failure`).
    pub end_cause: String,
    /// For failed calls: which part of the switch failed, and how.
    pub failure: Option<String>,
    /// Media quality, for calls whose media the switch relayed.
    pub media: Option<MediaQuality>,
    /// How the audio crossed the switch (`PCMU pass-through`, `opus <-> PCMA (transcoded)`).
    #[serde(default)]
    pub codec_path: Option<String>,
    /// What call control (an IVR) did on the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlRecord>,
    /// The call's recording by the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<CdrRecording>,
    /// Meta's recording of the call (a recording id), once Meta delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_recording_id: Option<String>,
    /// Meta's transcript of the call (a recording id), once Meta delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_transcript_id: Option<String>,
}

/// A call's recording as its CDR names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrRecording {
    /// The recording's id (`GET /v1/recordings/{id}`).
    pub id: String,
    /// Where it is kept: a local path, or `s3://<bucket>/<key>`.
    pub file: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// What call control did on a call: the way through the IVR, what the caller entered, and
/// what the call produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlRecord {
    /// The IVR that ran.
    pub ivr: String,
    /// Node names and the digits that chose each branch (e.g. `["main", "2", "sales"]`).
    pub ivr_path: Vec<String>,
    /// Every input the caller completed, in order.
    pub digits: Vec<String>,
    /// The voicemail's file.
    #[serde(default)]
    pub voicemail: Option<String>,
    /// WhatsApp messages sent to the caller.
    pub messages: u32,
    /// Callback permission requests sent.
    pub callback_requests: u32,
    /// Why the script ended (`None`: the call went to a dialled destination).
    #[serde(default)]
    pub end: Option<String>,
    /// The queue the call waited in, if it went to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The agent who answered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How long it waited in the queue, milliseconds (until an agent answered, the caller
    /// hung up, or the overflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// How it left the queue: `answered`, `abandoned` or `overflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_outcome: Option<String>,
    /// The HTTP app that drove the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// How the app first failed (`timeout: …`, `http_5xx: …`); the fallback took the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_error: Option<String>,
    /// The media streams to voice bots the call had, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamRecord>,
}

/// How a media stream to a voice bot went, for the CDR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The bot's URL (without its query).
    pub url: String,
    /// `twilio` or `l16`.
    pub format: String,
    /// The stream's id (the `streamSid` the bot saw).
    pub stream_sid: String,
    /// How long it ran, milliseconds (0: it never connected).
    pub duration_ms: u64,
    /// Why it ended: `caller_hangup`, `bot_closed`, `handover`, `bot_silent`,
    /// `bot_malformed`, `bot_flood`, `bot_unresponsive`, `bot_unreachable`,
    /// `handshake_failed`, `protocol_error`, `replaced`.
    pub end: String,
    /// The bot's handover parameters, when it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<serde_json::Map<String, serde_json::Value>>,
    /// Audio bytes sent to the bot, and received from it.
    pub bytes_to_bot: u64,
    /// Audio bytes received from the bot.
    pub bytes_from_bot: u64,
    /// Messages of the bot dropped as malformed.
    #[serde(default)]
    pub malformed: u32,
    /// Bytes of the bot's audio dropped beyond the playout buffer.
    #[serde(default)]
    pub flood_dropped_bytes: u64,
    /// Connection attempts (more than 1: it was retried).
    pub attempts: u32,
    /// Latency added by the switch, customer → bot, microseconds (p50, p99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_bot_us: Option<[u64; 2]>,
    /// Latency added by the switch, bot → customer (the playout prefill included),
    /// microseconds (p50, p99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_caller_us: Option<[u64; 2]>,
    /// The first connection error, when it failed to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the media of a call looked like from the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaQuality {
    /// RTP packets received from both sides.
    pub packets: i64,
    /// Packets lost on the way to the switch, both sides.
    pub lost: i64,
    /// Interarrival jitter of the worse side, milliseconds.
    pub jitter_ms: i64,
    /// Estimated MOS (ITU-T G.107 E-model from loss and jitter) ×100: 441 is 4.41.
    pub mos_centi: i64,
}

/// Which CDRs to list. Results are newest first.
#[derive(Debug, Clone, Default)]
pub struct CdrFilter {
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Only this outcome.
    pub outcome: Option<CallOutcome>,
    /// Only calls of this business number.
    pub business_number: Option<String>,
    /// Only calls offered at or after this time.
    pub since: Option<i64>,
    /// Only calls offered before this time.
    pub until: Option<i64>,
    /// At most this many (0: 100).
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
}

/// Storage of CDRs.
pub trait CdrRepository {
    /// Inserts CDRs in one transaction. A CDR whose call id is already stored is skipped, so
    /// a batch retried after an uncertain failure never duplicates a record.
    fn insert_batch(
        &self,
        cdrs: &[Cdr],
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;
    /// The CDR of one call.
    fn get(
        &self,
        call_id: &str,
    ) -> impl std::future::Future<Output = Result<Option<Cdr>, StoreError>> + Send;
    /// CDRs matching `filter`, newest first.
    fn list(
        &self,
        filter: &CdrFilter,
    ) -> impl std::future::Future<Output = Result<Vec<Cdr>, StoreError>> + Send;
    /// Number of CDRs matching `filter` (ignoring its limit and offset).
    fn count(
        &self,
        filter: &CdrFilter,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;
}

#[derive(sqlx::FromRow)]
struct CdrRow {
    call_id: String,
    node_id: String,
    direction: String,
    business_number: Option<String>,
    customer_wa_id: Option<String>,
    wa_call_id: Option<String>,
    sip_call_id: Option<String>,
    trunk: Option<String>,
    offered_at: i64,
    ringing_at: Option<i64>,
    answered_at: Option<i64>,
    ended_at: i64,
    duration_ms: i64,
    outcome: String,
    hangup_by: String,
    end_cause: String,
    failure: Option<String>,
    media_packets: Option<i64>,
    media_lost: Option<i64>,
    media_jitter_ms: Option<i64>,
    media_mos_centi: Option<i64>,
    codec_path: Option<String>,
    control: Option<String>,
    recording_id: Option<String>,
    recording_file: Option<String>,
    recording_sha256: Option<String>,
    meta_recording_id: Option<String>,
    meta_transcript_id: Option<String>,
}

impl TryFrom<CdrRow> for Cdr {
    type Error = StoreError;

    fn try_from(r: CdrRow) -> Result<Self, StoreError> {
        Ok(Cdr {
            call_id: r.call_id,
            node_id: r.node_id,
            direction: r.direction.parse()?,
            business_number: r.business_number,
            customer_wa_id: r.customer_wa_id,
            wa_call_id: r.wa_call_id,
            sip_call_id: r.sip_call_id,
            trunk: r.trunk,
            offered_at: r.offered_at,
            ringing_at: r.ringing_at,
            answered_at: r.answered_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            outcome: r.outcome.parse()?,
            hangup_by: r.hangup_by.parse()?,
            end_cause: r.end_cause,
            failure: r.failure,
            media: match (
                r.media_packets,
                r.media_lost,
                r.media_jitter_ms,
                r.media_mos_centi,
            ) {
                (Some(packets), Some(lost), Some(jitter_ms), Some(mos_centi)) => {
                    Some(MediaQuality {
                        packets,
                        lost,
                        jitter_ms,
                        mos_centi,
                    })
                }
                _ => None,
            },
            codec_path: r.codec_path,
            // A record this version cannot read is left out rather than failing the CDR.
            control: r
                .control
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
            recording: match (r.recording_id, r.recording_file, r.recording_sha256) {
                (Some(id), Some(file), Some(sha256)) => Some(CdrRecording { id, file, sha256 }),
                _ => None,
            },
            meta_recording_id: r.meta_recording_id,
            meta_transcript_id: r.meta_transcript_id,
        })
    }
}

const COLUMNS: &str = "call_id, node_id, direction, business_number, customer_wa_id, wa_call_id, \
     sip_call_id, trunk, offered_at, ringing_at, answered_at, ended_at, duration_ms, outcome, \
     hangup_by, end_cause, failure, media_packets, media_lost, media_jitter_ms, media_mos_centi, \
     codec_path, control, recording_id, recording_file, recording_sha256, meta_recording_id, \
     meta_transcript_id";

/// The same SQL for both backends, instantiated per concrete database type so that no
/// generic trait bounds leak into the rest of the crate.
macro_rules! cdr_queries {
    ($db:ty) => {
        use sqlx::QueryBuilder;

        use super::*;

        pub(super) async fn insert_batch(
            pool: &sqlx::Pool<$db>,
            cdrs: &[Cdr],
            webhook: Option<&str>,
        ) -> Result<u64, StoreError> {
            if cdrs.is_empty() {
                return Ok(0);
            }
            let mut tx = pool.begin().await?;
            let mut inserted = 0;
            // SQLite allows 32766 bound values; 28 columns x 500 rows stays well below.
            for chunk in cdrs.chunks(500) {
                let mut q = QueryBuilder::<$db>::new(format!("INSERT INTO cdrs ({COLUMNS}) "));
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(c.call_id.clone())
                        .push_bind(c.node_id.clone())
                        .push_bind(c.direction.as_str())
                        .push_bind(c.business_number.clone())
                        .push_bind(c.customer_wa_id.clone())
                        .push_bind(c.wa_call_id.clone())
                        .push_bind(c.sip_call_id.clone())
                        .push_bind(c.trunk.clone())
                        .push_bind(c.offered_at)
                        .push_bind(c.ringing_at)
                        .push_bind(c.answered_at)
                        .push_bind(c.ended_at)
                        .push_bind(c.duration_ms)
                        .push_bind(c.outcome.as_str())
                        .push_bind(c.hangup_by.as_str())
                        .push_bind(c.end_cause.clone())
                        .push_bind(c.failure.clone())
                        .push_bind(c.media.map(|m| m.packets))
                        .push_bind(c.media.map(|m| m.lost))
                        .push_bind(c.media.map(|m| m.jitter_ms))
                        .push_bind(c.media.map(|m| m.mos_centi))
                        .push_bind(c.codec_path.clone())
                        .push_bind(
                            c.control
                                .as_ref()
                                .and_then(|r| serde_json::to_string(r).ok()),
                        )
                        .push_bind(c.recording.as_ref().map(|r| r.id.clone()))
                        .push_bind(c.recording.as_ref().map(|r| r.file.clone()))
                        .push_bind(c.recording.as_ref().map(|r| r.sha256.clone()))
                        .push_bind(c.meta_recording_id.clone())
                        .push_bind(c.meta_transcript_id.clone());
                });
                q.push(" ON CONFLICT (call_id) DO NOTHING");
                inserted += q.build().execute(&mut *tx).await?.rows_affected();
                if let Some(node) = webhook {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO cdr_webhook_outbox (call_id, node_id, ended_at) ",
                    );
                    q.push_values(chunk, |mut b, c| {
                        b.push_bind(c.call_id.clone())
                            .push_bind(node.to_string())
                            .push_bind(c.ended_at);
                    });
                    q.push(" ON CONFLICT (call_id) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(inserted)
        }

        pub(super) async fn webhook_pending(
            pool: &sqlx::Pool<$db>,
            node: Option<&str>,
            limit: i64,
        ) -> Result<Vec<Cdr>, StoreError> {
            let mut q = QueryBuilder::<$db>::new(format!(
                "SELECT {COLUMNS} FROM cdrs WHERE call_id IN (SELECT call_id \
                 FROM cdr_webhook_outbox WHERE gave_up_at IS NULL"
            ));
            if let Some(node) = node {
                q.push(" AND node_id = ").push_bind(node.to_string());
            }
            q.push(" ORDER BY ended_at, call_id LIMIT ")
                .push_bind(limit)
                .push(")");
            let rows: Vec<CdrRow> = q.build_query_as().fetch_all(pool).await?;
            let mut cdrs = rows
                .into_iter()
                .map(Cdr::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            cdrs.sort_by(|a, b| (a.ended_at, &a.call_id).cmp(&(b.ended_at, &b.call_id)));
            Ok(cdrs)
        }

        pub(super) async fn get(
            pool: &sqlx::Pool<$db>,
            call_id: &str,
        ) -> Result<Option<Cdr>, StoreError> {
            let mut q =
                QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM cdrs WHERE call_id = "));
            q.push_bind(call_id.to_string());
            let row: Option<CdrRow> = q.build_query_as().fetch_optional(pool).await?;
            row.map(Cdr::try_from).transpose()
        }

        fn push_filter(q: &mut QueryBuilder<'_, $db>, f: &CdrFilter) {
            q.push(" WHERE 1 = 1");
            if let Some(d) = f.direction {
                q.push(" AND direction = ").push_bind(d.as_str());
            }
            if let Some(o) = f.outcome {
                q.push(" AND outcome = ").push_bind(o.as_str());
            }
            if let Some(b) = &f.business_number {
                q.push(" AND business_number = ").push_bind(b.clone());
            }
            if let Some(t) = f.since {
                q.push(" AND offered_at >= ").push_bind(t);
            }
            if let Some(t) = f.until {
                q.push(" AND offered_at < ").push_bind(t);
            }
        }

        pub(super) async fn list(
            pool: &sqlx::Pool<$db>,
            f: &CdrFilter,
        ) -> Result<Vec<Cdr>, StoreError> {
            let mut q = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM cdrs"));
            push_filter(&mut q, f);
            let limit = if f.limit == 0 {
                100
            } else {
                f.limit.min(10_000)
            };
            q.push(" ORDER BY offered_at DESC, call_id DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(i64::from(f.offset));
            let rows: Vec<CdrRow> = q.build_query_as().fetch_all(pool).await?;
            rows.into_iter().map(Cdr::try_from).collect()
        }

        pub(super) async fn count(
            pool: &sqlx::Pool<$db>,
            f: &CdrFilter,
        ) -> Result<u64, StoreError> {
            let mut q = QueryBuilder::<$db>::new("SELECT COUNT(*) FROM cdrs");
            push_filter(&mut q, f);
            let (n,): (i64,) = q.build_query_as().fetch_one(pool).await?;
            Ok(u64::try_from(n).unwrap_or(0))
        }
    };
}

mod sqlite {
    cdr_queries!(sqlx::Sqlite);
}

mod postgres {
    cdr_queries!(sqlx::Postgres);
}

impl CdrRepository for Store {
    async fn insert_batch(&self, cdrs: &[Cdr]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::insert_batch(p, cdrs, None).await,
            Store::Postgres(p) => postgres::insert_batch(p, cdrs, None).await,
        }
    }

    async fn get(&self, call_id: &str) -> Result<Option<Cdr>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::get(p, call_id).await,
            Store::Postgres(p) => postgres::get(p, call_id).await,
        }
    }

    async fn list(&self, filter: &CdrFilter) -> Result<Vec<Cdr>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::list(p, filter).await,
            Store::Postgres(p) => postgres::list(p, filter).await,
        }
    }

    async fn count(&self, filter: &CdrFilter) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::count(p, filter).await,
            Store::Postgres(p) => postgres::count(p, filter).await,
        }
    }
}

const WEBHOOK_DONE: &str = "DELETE FROM cdr_webhook_outbox WHERE call_id = $1";
const WEBHOOK_GAVE_UP: &str = "UPDATE cdr_webhook_outbox SET gave_up_at = $2, \
                               attempts = attempts + $3 WHERE call_id = $1";
const WEBHOOK_BACKLOG: &str = "SELECT COUNT(*) FROM cdr_webhook_outbox \
                               WHERE gave_up_at IS NULL AND ($1 IS NULL OR node_id = $1)";
const WEBHOOK_ADOPT: &str = "UPDATE cdr_webhook_outbox SET node_id = $1 WHERE node_id <> $1 \
                             AND node_id NOT IN (SELECT node_id FROM cluster_nodes \
                             WHERE state IN ('up', 'draining') AND heartbeat_at >= $2)";

/// The CDR webhook's durable outbox: CDRs stored with [`Store::insert_cdrs`] and a node
/// named wait here until that node's webhook sender delivers them.
impl Store {
    /// Inserts CDRs in one transaction, as [`CdrRepository::insert_batch`] does; with
    /// `webhook`, each new one also waits in the outbox for that node's CDR webhook, in the
    /// same transaction (a CDR is never stored without its delivery, nor the reverse).
    pub async fn insert_cdrs(
        &self,
        cdrs: &[Cdr],
        webhook: Option<&str>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::insert_batch(p, cdrs, webhook).await,
            Store::Postgres(p) => postgres::insert_batch(p, cdrs, webhook).await,
        }
    }

    /// Up to `limit` CDRs waiting for the webhook of `node` (of any node when `None`: a
    /// single node owns them all), oldest first.
    pub async fn webhook_pending(
        &self,
        node: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Cdr>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::webhook_pending(p, node, limit).await,
            Store::Postgres(p) => postgres::webhook_pending(p, node, limit).await,
        }
    }

    /// The webhook delivered call `call_id`'s CDR.
    pub async fn webhook_delivered(&self, call_id: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(WEBHOOK_DONE)
            .bind(call_id)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// The webhook gave up on call `call_id`'s CDR at `at` (epoch ms) after `attempts`
    /// attempts; the row stays, out of the queue.
    pub async fn webhook_gave_up(
        &self,
        call_id: &str,
        at: i64,
        attempts: i32,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(WEBHOOK_GAVE_UP)
            .bind(call_id)
            .bind(at)
            .bind(attempts)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// How many CDRs wait for the webhook of `node` (of any node when `None`).
    pub async fn webhook_backlog(&self, node: Option<&str>) -> Result<u64, StoreError> {
        let (n,): (i64,) = on_pool!(self, |p| sqlx::query_as(WEBHOOK_BACKLOG)
            .bind(node)
            .fetch_one(p)
            .await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Node `me` adopts the CDRs waiting for the webhook of every node not alive since
    /// `alive_since` (epoch ms): lost, left, or never in the cluster's register. Each row
    /// goes to one adopter. Returns how many it took.
    pub async fn webhook_adopt(&self, me: &str, alive_since: i64) -> Result<u64, StoreError> {
        let r = on_pool!(self, |p| sqlx::query(WEBHOOK_ADOPT)
            .bind(me)
            .bind(alive_since)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(r)
    }
}
