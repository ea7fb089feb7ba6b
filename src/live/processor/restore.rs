//! Starting where the last run stopped: each owned partition's engine (its
//! whole object and the chain of changes stored since) and branch stage from its
//! checkpoint (or empty, with `--rebuild` or on a first start), and the
//! three inputs filtered to the owned partitions.
//! The other half of `checkpoint.rs`.

use std::collections::BTreeMap;
use std::time::Instant;

use async_nats::jetstream::object_store::ObjectStore;

use super::super::input::{Input, Which};
use super::super::store::{self, Kind};
use super::{Part, Stage};
use crate::config::Config;
use crate::engine::{self, BranchStage, Engine, Symbols};
use crate::nats::LiveError;
use crate::partition::Owned;
use crate::rules::RuleSet;
use crate::time::Ts;

/// The engines and branch stages of the owned partitions.
pub(super) async fn state(
    checkpoints: &ObjectStore,
    owned: &Owned,
    set: &RuleSet,
    engine_config: engine::Config,
    rebuild: bool,
) -> Result<(BTreeMap<u16, Part>, BTreeMap<u16, Stage>), LiveError> {
    let count = owned.count;
    let refused = |kind, p, e: engine::CheckpointError| LiveError::Checkpoint {
        name: store::object_name(kind, p),
        reason: e.to_string(),
    };
    let mut parts = BTreeMap::new();
    let mut stages = BTreeMap::new();
    let (mut engines, mut links) = (0, 0);
    // One table of names for the owned partitions' engines.
    let syms = Symbols::new(engine_config.max_symbols);
    for &p in &owned.list {
        let whole = if rebuild { None } else { store::load(checkpoints, Kind::Engine, p, count).await? };
        let part = match whole {
            Some(whole) => {
                // The chain of changes stored since, each counted from the one before.
                let chain = store::load_chain(checkpoints, &whole, count).await?;
                let states: Vec<&[u8]> = std::iter::once(&whole).chain(&chain).map(|s| &s.state[..]).collect();
                let restored = Engine::restore_sharing(&states, set.clone(), engine_config.clone(), syms.clone())
                    .map_err(|e| refused(if chain.is_empty() { Kind::Engine } else { Kind::Changes }, p, e))?;
                let positions = &chain.last().unwrap_or(&whole).positions;
                let pos = [positions.first().copied().unwrap_or(0), positions.get(1).copied().unwrap_or(0)];
                engines += 1;
                links += chain.len();
                // The next object is whole: its changes count from a snapshot taken here.
                Part {
                    engine: restored.without_branch_stage(),
                    pos,
                    last_input: Instant::now(),
                    dirty: false,
                    whole: None,
                    links: 0,
                }
            }
            None => Part {
                engine: Engine::sharing(set.clone(), engine_config.clone(), syms.clone()).without_branch_stage(),
                pos: [0, 0],
                last_input: Instant::now(),
                dirty: true,
                whole: None,
                links: 0,
            },
        };
        parts.insert(p, part);
        let saved = if rebuild { None } else { store::load(checkpoints, Kind::Stage, p, count).await? };
        let stage = match saved {
            Some(saved) => Stage {
                stage: BranchStage::restore(&saved.state, set, count).map_err(|e| refused(Kind::Stage, p, e))?,
                pos: saved.positions.first().copied().unwrap_or(0),
                marks: if saved.marks.len() == usize::from(count) { saved.marks } else { vec![Ts::MIN; count.into()] },
                dirty: false,
            },
            None => {
                Stage { stage: BranchStage::new(set, count), pos: 0, marks: vec![Ts::MIN; count.into()], dirty: true }
            }
        };
        stages.insert(p, stage);
    }
    if engines > 0 {
        tracing::info!(engines, links, "engines restored from their checkpoints (whole objects and links of changes)");
    }
    Ok((parts, stages))
}

/// Scans, contacts and branch facts of the owned partitions (one wildcard
/// each when it owns them all), under consumers named after the instance.
pub(super) fn inputs(config: &Config, owned: &Owned) -> [Input; 3] {
    let all = owned.list.len() == usize::from(owned.count);
    let per_partition = |prefix: &str| -> Vec<String> {
        if all {
            vec![format!("{prefix}.*")]
        } else {
            owned.list.iter().map(|p| format!("{prefix}.{p}")).collect()
        }
    };
    let mut fact_filters = per_partition("forewarn.facts");
    fact_filters.push("forewarn.marks.*".into());
    let streams = &config.streams;
    let input = |which, stream: &str, name: &str, filters| {
        Input::new(which, stream, format!("forewarn-{}-{name}", config.instance), filters)
    };
    [
        input(Which::Scans, &streams.scans.name, "scans", per_partition("scans")),
        input(Which::Contacts, &streams.contacts.name, "contacts", per_partition("contacts")),
        input(Which::Facts, &streams.facts.name, "facts", fact_filters),
    ]
}
