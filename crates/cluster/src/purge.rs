//! The purge sweep (issue 7): walks the records this node stores in token order, a
//! bounded number per round, and
//! * turns every version that expired into a tombstone under its own dot
//!   (`Node::purge_expired`: the bytes go, reads see no difference, merges keep the
//!   tombstone over any copy of the value; see `Record::purge_expired`);
//! * forgets every record that holds only tombstones once tombstone GC allows it
//!   (`tombstone::Collector`: by acknowledgement or by grace).
//!
//! Why a sweep and not a timer per key: expiry and GC depend on time and on what
//! anti-entropy confirmed, not on writes, so something has to look again; a cursor
//! that wraps looks at every record once per pass at a bounded cost per round (the
//! server runs a round every `purge_interval_ms`). Each replica purges on its own
//! clock; where one purged a key before another, anti-entropy exchanges that key
//! once (both end with the tombstone).
//!
//! Limits: `PurgeSettings::page_keys` records per blocking storage call,
//! `keys_per_round` per round. A record that does not decode stops the sweep there
//! (the scan reports it; keys after it in token order wait, as for anti-entropy).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ringkv_core::{Key, Record};

use crate::node::{Node, NodeError};
use crate::tombstone::{Collected, Collector, GcReason};
use crate::transport::{Spawn, offload};

/// How much one round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// Records read per blocking storage call.
    pub page_keys: usize,
    /// Most records one round reads; the next round goes on from there.
    pub keys_per_round: usize,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub keys_scanned: u64,
    /// Expired versions turned into tombstones.
    pub ttl_purged: u64,
    /// Tombstone-only records forgotten, by reason.
    pub collected: Collected,
    /// Whether the sweep reached the end of the ring (the next round starts over).
    pub wrapped: bool,
    /// Whether storage failed (the next round retries from the same place).
    pub failed: bool,
}

/// Totals since start, for `/v1/cluster/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeTotals {
    pub rounds: u64,
    /// Complete passes over the stored records.
    pub sweeps: u64,
    pub keys_scanned: u64,
    pub ttl_purged: u64,
    /// Forgotten by the sweep and by anti-entropy, by reason.
    pub tombstones_purged: Collected,
}

#[derive(Default)]
struct State {
    /// The last key looked at: the sweep goes on after it.
    cursor: Option<Key>,
    totals: PurgeTotals,
}

/// One node's purge sweep.
pub struct Purge {
    node: Arc<Node>,
    spawner: Arc<dyn Spawn>,
    /// Tombstone GC; without it only expired versions are purged.
    collector: Option<Arc<Collector>>,
    settings: PurgeSettings,
    state: Mutex<State>,
}

impl Purge {
    pub fn new(
        node: Arc<Node>,
        spawner: Arc<dyn Spawn>,
        collector: Option<Arc<Collector>>,
        settings: PurgeSettings,
    ) -> Purge {
        Purge {
            node,
            spawner,
            collector,
            settings: PurgeSettings {
                page_keys: settings.page_keys.max(1),
                keys_per_round: settings.keys_per_round.max(1),
            },
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the sweep (and, through the collector, anti-entropy) did so far.
    pub fn totals(&self) -> PurgeTotals {
        let mut totals = self.state().totals;
        if let Some(collector) = &self.collector {
            totals.tombstones_purged = collector.collected();
        }
        totals
    }

    /// One round: up to `keys_per_round` records from where the last round stopped,
    /// a page per blocking call.
    pub async fn round(&self) -> PurgeReport {
        let mut report = PurgeReport::default();
        let mut cursor = self.state().cursor.clone();
        while report.keys_scanned < self.settings.keys_per_round as u64 {
            let (node, collector, after) =
                (self.node.clone(), self.collector.clone(), cursor.clone());
            let limit = self
                .settings
                .page_keys
                .min(self.settings.keys_per_round - report.keys_scanned as usize);
            let page = offload(self.spawner.as_ref(), move || {
                purge_page(&node, collector.as_deref(), after.as_ref(), limit)
            })
            .await;
            let page = match page {
                Some(Ok(page)) => page,
                Some(Err(error)) => {
                    tracing::warn!("purge stopped by local storage: {error}");
                    report.failed = true;
                    break;
                }
                None => break, // Shutting down.
            };
            report.keys_scanned += page.scanned;
            report.ttl_purged += page.ttl_purged;
            report.collected.ack += page.collected.ack;
            report.collected.grace += page.collected.grace;
            cursor = page.last;
            if page.scanned < limit as u64 {
                report.wrapped = true;
                cursor = None;
                break;
            }
        }
        let mut state = self.state();
        if !report.failed {
            state.cursor = cursor;
        }
        state.totals.rounds += 1;
        state.totals.sweeps += u64::from(report.wrapped);
        state.totals.keys_scanned += report.keys_scanned;
        state.totals.ttl_purged += report.ttl_purged;
        drop(state);
        metrics::counter!("ringkv_ttl_purged_total").increment(report.ttl_purged);
        if report.ttl_purged + report.collected.ack + report.collected.grace > 0 {
            tracing::debug!(
                ttl_purged = report.ttl_purged,
                ack = report.collected.ack,
                grace = report.collected.grace,
                "purge round"
            );
        }
        report
    }
}

/// What one page did.
struct Page {
    scanned: u64,
    ttl_purged: u64,
    collected: Collected,
    /// The last key read, if any.
    last: Option<Key>,
}

/// Reads up to `limit` records after `after`, purges what expired in them, and
/// forgets those the collector allows. Blocking.
fn purge_page(
    node: &Node,
    collector: Option<&Collector>,
    after: Option<&Key>,
    limit: usize,
) -> Result<Page, NodeError> {
    let records = node.scan(after, limit)?;
    let now_ms = node.now_ms();
    let mut page = Page {
        scanned: records.len() as u64,
        ttl_purged: 0,
        collected: Collected::default(),
        last: records.last().map(|(key, _)| key.clone()),
    };
    let mut collectable: Vec<(Key, Record, GcReason)> = Vec::new();
    for (key, record) in records {
        let record = match record.purge_expired(now_ms) {
            Some(purged) => {
                page.ttl_purged += node.purge_expired(&key, now_ms)? as u64;
                purged
            }
            None => record,
        };
        if let Some(reason) = collector.and_then(|collector| collector.reason(&key, &record)) {
            collectable.push((key, record, reason));
        }
    }
    if let Some(collector) = collector
        && !collectable.is_empty()
    {
        page.collected = collector.forget(collectable)?;
    }
    Ok(page)
}
