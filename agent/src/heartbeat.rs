//! Heartbeats to the appliance: every interval, the node's facts, leases
//! and dnsmasq state; on failure, retries with a growing delay.

use std::sync::Arc;
use std::time::Duration;

use daas_agent_api::join::HEARTBEAT_INTERVAL_SECS;
use daas_agent_api::{paths, Heartbeat, HeartbeatResponse, NodeSecret};
use tokio_util::sync::CancellationToken;

use crate::client::{ApplianceClient, ClientError};
use crate::shared::Shared;
use crate::state::Joined;
use crate::util::unix_now;

/// What the heartbeat loop needs.
pub struct HeartbeatTask {
    pub client: ApplianceClient,
    pub secret: NodeSecret,
    pub interval: Duration,
    /// `true` when the interval comes from the config (then the appliance's
    /// answer does not change it).
    pub interval_fixed: bool,
    pub max_backoff: Duration,
}

impl HeartbeatTask {
    pub fn new(
        joined: &Joined,
        configured_interval: Option<u32>,
        timeout: Duration,
        max_backoff: Duration,
    ) -> Result<Self, ClientError> {
        let url = crate::client::ApplianceUrl::parse(&joined.record.appliance_url)?;
        let client = ApplianceClient::new(
            url,
            joined.record.appliance_fingerprint,
            Some((&joined.cert_pem, &joined.key_pem)),
            timeout,
        )?;
        let secs = configured_interval.unwrap_or(joined.record.heartbeat_interval_secs);
        Ok(HeartbeatTask {
            client,
            secret: joined.secret.clone(),
            interval: Duration::from_secs(u64::from(secs.max(1))),
            interval_fixed: configured_interval.is_some(),
            max_backoff,
        })
    }

    /// Sends heartbeats until `stop`.
    pub async fn run(mut self, shared: Arc<Shared>, stop: CancellationToken) {
        let Some(node_id) = shared.join.as_ref().map(|j| j.node_id.clone()) else {
            return;
        };
        let path = paths::appliance_heartbeat(&node_id);
        let mut sequence = 0u64;
        let mut failures = 0u32;
        {
            let mut hb = shared.heartbeat.lock().expect("not poisoned");
            hb.interval_secs = u32::try_from(self.interval.as_secs()).unwrap_or(u32::MAX);
        }
        loop {
            sequence += 1;
            let result = self.beat(&shared, &node_id, sequence, &path).await;
            let delay = match result {
                Ok(resp) => {
                    if failures > 0 {
                        tracing::info!(node_id = %node_id, after = failures, "heartbeats reach the appliance again");
                    }
                    failures = 0;
                    if let Some(n) = resp.running_instances {
                        *shared.appliance_instances.lock().expect("not poisoned") = Some(n);
                    }
                    if let Some(secs) = resp.heartbeat_interval_secs {
                        if !self.interval_fixed && HEARTBEAT_INTERVAL_SECS.contains(&secs) {
                            self.interval = Duration::from_secs(u64::from(secs));
                        }
                    }
                    let mut hb = shared.heartbeat.lock().expect("not poisoned");
                    hb.sequence = sequence;
                    hb.last_ok = Some(unix_now());
                    hb.last_error = None;
                    hb.consecutive_failures = 0;
                    hb.interval_secs = u32::try_from(self.interval.as_secs()).unwrap_or(u32::MAX);
                    self.interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(self.interval, failures, self.max_backoff);
                    tracing::warn!(
                        node_id = %node_id,
                        failures,
                        retry_in = ?delay,
                        error = %e,
                        "heartbeat failed"
                    );
                    let mut hb = shared.heartbeat.lock().expect("not poisoned");
                    hb.sequence = sequence;
                    hb.last_error = Some(e.to_string());
                    hb.consecutive_failures = failures;
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn beat(
        &self,
        shared: &Shared,
        node_id: &daas_agent_api::NodeId,
        sequence: u64,
        path: &str,
    ) -> Result<HeartbeatResponse, String> {
        let facts = shared.facts().await?;
        let hb = Heartbeat {
            node_id: node_id.clone(),
            agent_started_at: shared.started_unix,
            sequence,
            sent_at: unix_now(),
            facts,
            instances: shared.store.list(),
            dnsmasq: shared.dnsmasq.status(),
        };
        self.client
            .post_json(path, &hb, Some(&self.secret))
            .await
            .map_err(|e| crate::util::chain(&e))
    }
}

/// The wait after `failures` failures in a row: the interval, doubled per
/// failure, at most `max` (but never less than the interval).
pub fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    (interval * factor).min(max.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), 1, s(60)), s(5));
        assert_eq!(backoff(s(5), 2, s(60)), s(10));
        assert_eq!(backoff(s(5), 4, s(60)), s(40));
        assert_eq!(backoff(s(5), 5, s(60)), s(60));
        assert_eq!(backoff(s(5), 1000, s(60)), s(60));
        assert_eq!(backoff(s(120), 3, s(60)), s(120));
    }
}
