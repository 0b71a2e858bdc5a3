//! The per-node task limit: 30 parallel clones without a lock timeout, and
//! the same burst without the limit provoking one.

use daas_proxmox::*;

use crate::harness::*;

async fn burst(c: &Client, n: u32) -> Vec<Result<Vmid, PveError>> {
    let mut joins = Vec::new();
    for i in 0..n {
        let c = c.clone();
        joins.push(tokio::spawn(async move {
            let vmid = 1000 + i;
            c.clone_vm(&linked(vmid, &format!("burst-{i}")))
                .await?
                .wait()
                .await
                .map(|_| vmid)
        }));
    }
    let mut out = Vec::new();
    for j in joins {
        out.push(j.await.unwrap());
    }
    out
}

#[tokio::test]
async fn thirty_parallel_clones_stay_within_the_node_limit() {
    let env = Env::start().await;
    let c = env.client();
    assert_eq!(c.limiter().per_node(), DEFAULT_TASKS_PER_NODE);
    let results = burst(&c, 30).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "clones failed: {failed:?}");
    env.settle().await;
    assert_eq!(env.made_vms().len(), 30);
    assert_eq!(c.limiter().available(NODE), DEFAULT_TASKS_PER_NODE);
    for r in results {
        remove_vm(&c, r.unwrap()).await.unwrap();
    }
    env.finish().await;
}

#[tokio::test]
async fn without_the_limit_parallel_clones_hit_the_lock_timeout() {
    let env = Env::start().await;
    let c = env.client_with(|c| c.tasks_per_node = 30);
    let results = burst(&c, 30).await;
    let timeouts: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| e.kind() == ErrorKind::LockTimeout)
        .collect();
    assert!(
        !timeouts.is_empty(),
        "the simulator should make unbounded parallel clones hit its lock timeout"
    );
    assert!(
        timeouts[0].to_string().contains("can't lock file"),
        "{}",
        timeouts[0]
    );
    assert!(timeouts[0].is_transient());
    env.settle().await;
    // Failed clones leave nothing behind.
    let ok: Vec<Vmid> = results.into_iter().filter_map(Result::ok).collect();
    let mut made = env.made_vms();
    made.sort_unstable();
    let mut expected = ok.clone();
    expected.sort_unstable();
    assert_eq!(made, expected);
    for vmid in ok {
        remove_vm(&c, vmid).await.unwrap();
    }
    env.finish().await;
}
