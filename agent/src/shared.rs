//! The state the API handlers and the heartbeat share.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daas_agent_api::status::{HeartbeatStatus, JoinStatus, LeaseStats};
use daas_agent_api::{AgentStatus, NodeFacts, API_VERSION};

use crate::dnsmasq::Dnsmasq;
use crate::facts::{gather, FactsInput};
use crate::state::JoinRecord;
use crate::store::LeaseStore;

pub struct Shared {
    pub store: LeaseStore,
    pub dnsmasq: Arc<Dnsmasq>,
    pub node_name: String,
    pub storage_paths: Vec<PathBuf>,
    pub started: Instant,
    /// Unix seconds of the start.
    pub started_unix: u64,
    pub join: Option<JoinRecord>,
    pub heartbeat: Mutex<HeartbeatStatus>,
    /// The instance count the appliance reported in its last heartbeat answer.
    pub appliance_instances: Mutex<Option<u32>>,
}

impl Shared {
    pub fn status(&self) -> AgentStatus {
        let (count, free) = self.store.counts();
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: API_VERSION,
            node_name: self.node_name.clone(),
            join: self.join.as_ref().map(|j| JoinStatus {
                node_id: j.node_id.clone(),
                appliance_url: j.appliance_url.clone(),
                appliance_fingerprint: j.appliance_fingerprint,
                joined_at: j.joined_at,
                heartbeat: self.heartbeat.lock().expect("not poisoned").clone(),
            }),
            leases: LeaseStats {
                count: u32::try_from(count).unwrap_or(u32::MAX),
                range: self.store.range(),
                free,
                hosts_file: self.store.path().display().to_string(),
                writes: self.store.writes(),
            },
            dnsmasq: self.dnsmasq.status(),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Measures the node (off the async threads, at most 5 s).
    pub async fn facts(&self) -> Result<NodeFacts, String> {
        let input = FactsInput {
            storage_paths: self.storage_paths.clone(),
            leases: u32::try_from(self.store.counts().0).unwrap_or(u32::MAX),
            appliance_instances: *self.appliance_instances.lock().expect("not poisoned"),
            dnsmasq_version: self.dnsmasq.version(),
        };
        let task = tokio::task::spawn_blocking(move || gather(&input));
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(format!("measuring the node failed: {e}")),
            Err(_) => Err("measuring the node took more than 5 s (a hung storage path?)".into()),
        }
    }
}
