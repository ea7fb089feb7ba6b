//! forewarn: a stream processor that tells parcel customers and branches
//! about problems before they call.
//!
//! # Code map
//!
//! Events flow `event` → `engine` → `alert`; everything else drives or
//! describes that flow. One dependency direction, from the bottom: `time`, `buffer`;
//! `partition`, `holdout`, `event`, `clock`; `rules`; `alert`; `engine`; `metrics`,
//! `config`; `nats`, `replay`, `cases`, `simulate`; `report`, `dispatch`;
//! `live`; `api`; the CLI on top. A module imports only the layers below its own
//! (`tests/it/layers.rs` checks it).
//!
//! - [`event`]: the v1 input contract (`shared/events.md`). Bytes in, a
//!   validated [`event::Event`] or a [`event::Reject`] naming the field out.
//!   The only module that knows the wire format of events.
//! - [`rules`]: the rule model, read from `rules/*.toml` with
//!   `file:line:column` errors ([`rules::file`]), the pack's directory loaded
//!   and watched ([`rules::dir`]).
//! - [`cases`]: a pack's rule unit tests through the engine (`forewarn test`).
//! - [`engine`]: the pure core. `ingest(event)` and `advance(watermark)`
//!   return alerts. Holds the parcel [`engine::window`], the event-time
//!   timers and the [`engine::branch`] aggregates, and saves and restores all
//!   of it as a checkpoint. [`engine::Split`]: an engine per partition and
//!   the branch stage, as a deployment runs them, for the replay.
//! - [`alert`]: what the engine says, with deterministic ids, and its JSON
//!   Lines form ([`alert::Line`]: one type the engine writes and the
//!   dispatcher and machines read).
//! - [`replay`]: a file through the split engine (`forewarn replay`); a line dated
//!   far ahead of the flow waits for the lines after it (`replay/ahead.rs`).
//! - [`nats`]: what the processor and the dispatcher share on NATS: the
//!   connection and streams, the subjects, headers and message forms, the
//!   error a process on NATS stops with.
//! - [`live`]: the processor on NATS JetStream (`forewarn run`): consumers,
//!   one engine per owned [`partition`], the branch stage over JetStream,
//!   checkpoints in the object store, alerts and dead letters, its readiness
//!   and its side of the agent's lookups; and `forewarn dlq`, and the
//!   simulator's live publisher.
//! - [`dispatch`]: alerts into messages (`forewarn run`, `--role
//!   dispatch`): route, dedup ledger, quiet hours, grouping, rate limits,
//!   templates, email / SMS / webhooks with retries, outcomes, the daily
//!   branch digest; `replay --dispatch`, the backtest that really sends.
//! - [`api`]: the HTTP face on the ops address: `/healthz`, `/readyz`,
//!   `/metrics` and the agent's lookup API (`/v1`), reading what the
//!   processor and the dispatcher say.
//! - [`metrics`]: the Prometheus metrics of both, by one naming spec,
//!   served on `/metrics`.
//! - [`config`]: `forewarn.toml`, strict, every field defaulted (the
//!   dispatcher's section in [`config::dispatch`]).
//! - [`clock`]: the wall clock, or a file's, for the live shells.
//! - [`simulate`]: a synthetic carrier network in the v1 contract
//!   (`forewarn simulate`).
//! - [`report`]: the proof that forewarn speaks first (`forewarn report`).
//! - [`holdout`]: whether a parcel is in the hold-out group, whose
//!   customers are not messaged (the dispatcher, the report and the
//!   simulator agree by its hash).
//! - [`partition`]: which partition a parcel is in (FNV-1a, as the contract
//!   says) and which partitions a process owns.
//! - [`time`]: event-time instants and durations.
//!
//! # Where to change what
//!
//! - A rule's trigger or a new kind of rule: the model in [`rules`], its
//!   file syntax in `rules/file.rs`, its evaluation in `engine/plan.rs` (and
//!   `engine/wake.rs` for timers); a rule test in `rules/tests/`.
//! - What the contract accepts: [`event`] (and `shared/events.md` first).
//! - A field of an alert: `alert.rs` fills it, `alert/line.rs` carries it,
//!   `dispatch/notice.rs` keeps it (its round-trip test says if one is lost).
//! - A channel: `dispatch/channel/`, its configuration in `config/dispatch.rs`.
//! - A message's text: `rules/templates/<locale>/`.
//! - An HTTP endpoint: [`api`].
//! - A metric: [`metrics`] (one spec: `forewarn_<what>_<unit>`, closed label
//!   sets initialised at 0), then `deploy/prometheus` and `deploy/grafana`.
//! - A stream or subject: `nats/wire.rs` (subjects, headers, message ids) and
//!   `nats/connect.rs` (stream definitions), then `deploy/nats/streams/`.
//!
//! # Invariants
//!
//! - The engine does no IO, knows nothing of NATS, files or tokio, and never
//!   reads the wall clock: event time and the watermark are arguments. The
//!   same input gives the same alerts, byte for byte; live and replay give
//!   the same alert set, whatever the split of the partitions.
//! - No engine type derives serde: wire formats live at the edges
//!   (`event`, `alert`, rule files).
//! - Every store of the engine is bounded by [`engine::Config`], and what
//!   leaves it is counted in [`engine::Stats`].
//! - Contact data (names, phones, emails) lives once per parcel, in the
//!   parcel, and leaves with it.
//! - Live, the stored checkpoint's stream positions are the only
//!   acknowledgement (the input consumers acknowledge nothing): a restart
//!   resumes right after them, and nothing a checkpoint covers is missing
//!   from the streams (publishes are settled before the snapshot). Only [`live`] imports tokio or
//!   async-nats (and [`dispatch`], which runs on it).
//! - An alert is acknowledged only when every one of its messages has a
//!   final outcome recorded in the ledger; phones and addresses reach logs
//!   and outcomes only masked, and metric labels never.

pub mod alert;
pub mod api;
pub mod buffer;
pub mod cases;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod event;
pub mod holdout;
pub mod live;
pub mod metrics;
pub mod nats;
pub mod partition;
pub mod replay;
pub mod report;
pub mod rules;
pub mod simulate;
pub mod time;
