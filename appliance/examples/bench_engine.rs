//! Job engine benchmark: 1,000 lifecycle transitions against an in-process
//! backend with zero latency, so what is measured is orchestration alone
//! (store writes, queueing, step bookkeeping, logs).
//!
//!     cargo run --release -p daas-appliance --example bench_engine
//!
//! Reports per-transition latency (enqueue to finished) p50/p99/max and
//! throughput, sequentially and with 32 in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use daas_appliance::backend::*;
use daas_appliance::jobs::{Engine, JobLog, LogEvent};
use daas_appliance::lifecycle::{Lifecycle, NewObject};
use daas_appliance::model::*;
use daas_appliance::store::Store;
use tokio_util::sync::CancellationToken;

/// A backend that does nothing, at once.
struct Null;

#[async_trait]
impl Backend for Null {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn create(
        &self,
        _: &Object,
        _: Option<&Object>,
        _: &JobLog,
    ) -> Result<serde_json::Value, BackendError> {
        Ok(serde_json::Value::Null)
    }
    async fn run_script(
        &self,
        _: &Object,
        _: &Script,
        _: &JobLog,
        _: &CancellationToken,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    async fn finalize(&self, _: &Object, _: &JobLog) -> Result<serde_json::Value, BackendError> {
        Ok(serde_json::Value::Null)
    }
    async fn delete(&self, _: &Object, _: &JobLog) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start(&self, _: StartRequest<'_>, _: &JobLog) -> Result<Started, BackendError> {
        Ok(Started {
            backend_ref: serde_json::Value::Null,
            connection: Connection {
                protocol: Protocol::Vnc,
                target: Target::Tcp {
                    host: "127.0.0.1".into(),
                    port: 5900,
                },
                password: None,
                username: None,
            },
        })
    }
    async fn stop(&self, _: &Instance, _: &JobLog) -> Result<(), BackendError> {
        Ok(())
    }
    async fn inventory(&self) -> Result<Inventory, BackendError> {
        Ok(Inventory::default())
    }
    async fn remove_orphan(&self, _: &Orphan) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Waits for the job's end as the log stream does: its `Finished` event
/// (the store is checked first, for a job that ended before we subscribed).
/// No polling: a timer's millisecond granularity would be measured instead.
async fn wait(engine: &Engine, store: &Store, id: &str) {
    loop {
        let mut rx = engine.hub().subscribe(id);
        if store.job(id).unwrap().state.is_final() {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Ok(LogEvent::Finished(_))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                // The channel went away or nothing came: ask the store.
                _ => break,
            }
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let last = v.len() - 1;
    // The rank of the percentile, rounded down: no float-to-int casts.
    let rank = (1..=last)
        .take_while(|i| (*i as f64) <= last as f64 * p)
        .count();
    v[rank]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.db")).unwrap();
    let mut backends = Backends::default();
    backends.insert(Arc::new(Null));
    let engine = Engine::new(
        store.clone(),
        backends.clone(),
        daas_appliance::config::Jobs::default(),
    );
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    engine.start(CancellationToken::new(), rx);
    let cfg = Arc::new(daas_appliance::config::Config::default());
    let tickets = Arc::new(daas_appliance::auth::Tickets::new(Duration::from_secs(30)));
    let lc = Lifecycle::new(store.clone(), engine.clone(), backends, tickets, cfg);
    let admin = store.create_user("admin", Role::Admin, "x").unwrap();

    // A Ready chain to open an App from.
    let new = |name: &str, spec: Spec| NewObject {
        name: name.into(),
        kind: None,
        platform: None,
        protocol: None,
        backend: None,
        shared: false,
        spec,
    };
    let b = lc
        .create_baseimage(&admin, new("b", Spec::default()))
        .unwrap();
    wait(&engine, &store, &b.job.id).await;
    let e = lc
        .derive(
            &admin,
            Phase::Baseimage,
            &b.item.id,
            new("e", Spec::default()),
        )
        .unwrap();
    wait(&engine, &store, &e.job.id).await;
    let d = lc
        .derive(
            &admin,
            Phase::Environment,
            &e.item.id,
            new("d", Spec::default()),
        )
        .unwrap();
    wait(&engine, &store, &d.job.id).await;
    let a = lc
        .derive(
            &admin,
            Phase::Deployment,
            &d.item.id,
            NewObject {
                shared: true,
                ..new(
                    "a",
                    Spec {
                        command: vec!["true".into()],
                        ..Spec::default()
                    },
                )
            },
        )
        .unwrap();
    wait(&engine, &store, &a.job.id).await;

    // Sequential: 1,000 transitions = 500 × (open → running, stop → stopped).
    let mut lat = Vec::with_capacity(1000);
    let t0 = Instant::now();
    for _ in 0..500 {
        let t = Instant::now();
        let o = lc.open(&admin, &a.item.id).unwrap();
        wait(&engine, &store, &o.job.id).await;
        lat.push(t.elapsed());
        let t = Instant::now();
        let s = lc.stop(&admin, &o.item.id).unwrap();
        wait(&engine, &store, &s.job.id).await;
        lat.push(t.elapsed());
    }
    let seq_total = t0.elapsed();
    // Also lifecycle objects: 100 baseimages with 3 scripts each (create → ready).
    let scripts: Vec<Script> = (0..3)
        .map(|i| Script {
            name: format!("s{i}"),
            run: "true".into(),
            timeout_secs: 10,
        })
        .collect();
    let mut obj_lat = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        let b = lc
            .create_baseimage(
                &admin,
                new(
                    &format!("b{i}"),
                    Spec {
                        config_auto: scripts.clone(),
                        ..Spec::default()
                    },
                ),
            )
            .unwrap();
        wait(&engine, &store, &b.job.id).await;
        obj_lat.push(t.elapsed());
    }
    println!(
        "job engine, zero-latency backend (machine: {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| workload | n | p50 | p99 | max | per second |");
    println!("|---|---:|---:|---:|---:|---:|");
    let n = lat.len();
    let (p50, p99, max) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
    println!(
        "| instance start/stop transition (sequential) | {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
        p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3, n as f64 / seq_total.as_secs_f64()
    );
    let n2 = obj_lat.len();
    let (p50, p99, max) = (
        pct(&mut obj_lat, 0.5),
        pct(&mut obj_lat, 0.99),
        pct(&mut obj_lat, 1.0),
    );
    println!(
        "| baseimage create→ready, 8 steps (sequential) | {n2} | {:.2} ms | {:.2} ms | {:.2} ms | - |",
        p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3
    );
    // Concurrent: 1,000 transitions of 100 users' instances in parallel.
    let mut users = Vec::new();
    for i in 0..100 {
        users.push(
            store
                .create_user(&format!("u{i}"), Role::Admin, "x")
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for u in users {
        let lc = lc.clone();
        let store = store.clone();
        let engine = engine.clone();
        let app = a.item.id.clone();
        handles.push(tokio::spawn(async move {
            let mut l = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let o = lc.open(&u, &app).unwrap();
                wait(&engine, &store, &o.job.id).await;
                l.push(t.elapsed());
                let t = Instant::now();
                let s = lc.stop(&u, &o.item.id).unwrap();
                wait(&engine, &store, &s.job.id).await;
                l.push(t.elapsed());
            }
            l
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let total = t0.elapsed();
    let n = all.len();
    let (p50, p99, max) = (pct(&mut all, 0.5), pct(&mut all, 0.99), pct(&mut all, 1.0));
    println!(
        "| start/stop transitions, 100 users concurrently | {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
        p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, max.as_secs_f64() * 1e3, n as f64 / total.as_secs_f64()
    );
    println!("target: orchestration overhead <= 2 ms p99 per transition (sequential row)");
}
