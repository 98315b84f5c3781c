//! The bridge's lease: of several processes configured with the bridge,
//! the one holding it runs the worker, the gateway and the inbound task.
//!
//! The lease itself (asking, renewing, whether it surely still holds,
//! releasing) is [`chat_core::bridge::Lease`]; this module is the bridge's
//! side of it: what this process starts when it takes the lease
//! ([`step_up`]), what it stops when it loses or hands it back
//! ([`step_down`]), and the count of online agents that the holder shares
//! with processes on standby, which have no gateway of their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::Timestamp;
use chat_core::bridge::Leader;
use tokio::sync::mpsc;

use super::inbound::roster::Roster;
use super::inbound::{gateway, receive, watch_gateway};
use super::outbound::work;
use super::{LINK_STATUS, Leading, NAME, Shared};
use crate::error::{Error, Result};

/// Asks for the lease once (a renewal when this process holds it), and
/// starts or stops this process's worker and gateway to match. Returns
/// whether this process holds it.
pub(super) async fn hold_lease(shared: &Arc<Shared>) -> Result<bool> {
    let held = shared.lease.acquire(shared.outbox()?).await?;
    let until = shared.lease.until().unwrap_or_else(Timestamp::now);
    // The agents' count is a courtesy to processes on standby: failing to
    // share it changes nothing about who holds the lease.
    let shared_count = if held {
        step_up(shared).await;
        publish_agents(shared, until).await
    } else {
        step_down(shared).await;
        read_published_agents(shared).await
    };
    if let Err(err) = shared_count {
        tracing::debug!(error = %err, "discord bridge: cannot share the count of online agents");
    }
    Ok(held)
}

/// Renews the lease, or waits for it, until the bridge stops.
pub(super) async fn lead(shared: Arc<Shared>, held: bool) {
    shared.lease.keep(&Holder(shared.clone()), held).await;
}

/// This process as a candidate for the lease.
struct Holder(Arc<Shared>);

#[async_trait]
impl Leader for Holder {
    type Error = Error;

    async fn hold(&self) -> Result<bool> {
        hold_lease(&self.0).await
    }

    async fn stand_down(&self) {
        step_down(&self.0).await;
    }

    fn failed(&self, err: &Error) {
        self.0.record_error(err);
    }

    async fn tried(&self, held: bool) {
        if !held {
            // No worker refreshes the counts here.
            self.0.refresh_counts().await;
        }
    }
}

/// Starts the worker, the gateway and the inbound task, unless they run.
async fn step_up(shared: &Arc<Shared>) {
    let mut leading = shared.leading.lock().await;
    if leading.is_some() {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (inbound_tx, inbound_rx) = mpsc::channel(1024);
    let worker = tokio::spawn(work(shared.clone(), stop.clone()));
    let others = vec![
        tokio::spawn(receive(shared.clone(), inbound_rx)),
        tokio::spawn(gateway(shared.clone(), inbound_tx)),
        tokio::spawn(watch_gateway(shared.clone())),
    ];
    *leading = Some(Leading { stop, worker, others });
    shared.state().active = true;
    // Whatever the last holder left unenqueued is found now.
    shared.catch_up.notify_one();
}

/// Stops the worker (after the job it is running, within the HTTP timeout),
/// the gateway and the inbound task. Returns whether they were running.
pub(super) async fn step_down(shared: &Shared) -> bool {
    let Some(leading) = shared.leading.lock().await.take() else {
        return false;
    };
    {
        let mut state = shared.state();
        state.active = false;
        state.shard_up = false;
        // Requests made so far are answered to a gateway that stops now.
        state.roster = Roster::new(state.requests);
    }
    leading.stop.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
    for task in leading.others {
        task.abort();
    }
    let shards = shared.shards.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(shards) = shards {
        shards.shutdown_all().await;
    }
    let mut worker = leading.worker;
    let grace = shared.config.http_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, &mut worker).await.is_err() {
        worker.abort();
    }
    true
}

/// The lease holder tells processes on standby how many agents are online,
/// for their `/support/availability`; its word holds as long as its lease.
pub(super) async fn publish_agents(shared: &Shared, until: Timestamp) -> Result<()> {
    let count = shared.state().online_agents();
    let value = format!("{count}@{}", until.as_millis());
    shared.outbox()?.set_link(NAME, LINK_STATUS, "online_agents", &value).await?;
    Ok(())
}

async fn read_published_agents(shared: &Shared) -> Result<()> {
    let value = shared.outbox()?.remote_of(NAME, LINK_STATUS, "online_agents").await?;
    let now = Timestamp::now().as_millis();
    let count = value.as_deref().and_then(|v| {
        let (count, until) = v.split_once('@')?;
        (until.parse::<i64>().ok()? > now).then_some(count.parse::<usize>().ok()?)
    });
    shared.state().published_agents = count;
    Ok(())
}
