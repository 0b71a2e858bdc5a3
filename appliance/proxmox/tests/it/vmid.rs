//! The `nextid` race: 20 concurrent creations, no duplicate, no lost VM.

use std::collections::BTreeSet;

use daas_proxmox::*;

use crate::harness::*;

async fn create_many(c: &Client, allocators: &[VmidAllocator], n: usize) -> Vec<Vmid> {
    let mut joins = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let vmids = allocators[i % allocators.len()].clone();
        joins.push(tokio::spawn(async move {
            new_env_vm(&c, &vmids, &format!("race-{i}")).await
        }));
    }
    let mut ids = Vec::new();
    for j in joins {
        ids.push(j.await.unwrap().expect("every creation succeeds"));
    }
    ids
}

fn assert_all_distinct_and_present(env: &Env, ids: &[Vmid], n: usize) {
    let distinct: BTreeSet<_> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), n, "duplicate VMIDs: {ids:?}");
    let made: BTreeSet<_> = env.made_vms().into_iter().collect();
    assert_eq!(
        made, distinct,
        "VMs in the simulator differ from those reported"
    );
    let names: BTreeSet<_> = env
        .sim
        .state()
        .vms
        .iter()
        .filter_map(|v| v.config.get("name").cloned())
        .filter(|n| n.starts_with("race-"))
        .collect();
    assert_eq!(names.len(), n, "a VM is missing or doubled: {names:?}");
}

#[tokio::test]
async fn twenty_concurrent_allocations_in_one_process() {
    let env = Env::start().await;
    let c = env.client();
    let vmids = VmidAllocator::new(c.clone());
    let ids = create_many(&c, &[vmids], 20).await;
    env.settle().await;
    assert_all_distinct_and_present(&env, &ids, 20);
    // nextid gave the same answer to every caller; the local leases kept
    // them apart, so no clone hit a taken id.
    assert_eq!(env.count_requests("POST", "/clone"), 20);
    for id in ids {
        remove_vm(&c, id).await.unwrap();
    }
    env.finish().await;
}

#[tokio::test]
async fn twenty_concurrent_allocations_racing_across_writers() {
    let env = Env::start().await;
    let c = env.client();
    // Four allocators that know nothing of each other, like four
    // appliances (or a human) creating VMs on the same cluster.
    let allocators: Vec<_> = (0..4).map(|_| VmidAllocator::new(c.clone())).collect();
    let ids = create_many(&c, &allocators, 20).await;
    env.settle().await;
    assert_all_distinct_and_present(&env, &ids, 20);
    // The race did happen: some clones were refused for a taken id (at the
    // call or in the task) and retried with another.
    let refused = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/clone"))
        .count();
    assert!(refused > 20, "no race was provoked ({refused} clone calls)");
    for id in ids {
        remove_vm(&c, id).await.unwrap();
    }
    env.finish().await;
}
