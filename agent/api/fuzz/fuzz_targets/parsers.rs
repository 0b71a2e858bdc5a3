//! Every parser of daas-agent-api on arbitrary input: no panic, and what
//! parses prints back to something that parses to the same value.
//!
//! cargo +nightly fuzz run parsers -- -max_total_time=60
#![no_main]

use std::str::FromStr;

use daas_agent_api::*;
use libfuzzer_sys::fuzz_target;

fn round_trip<T: FromStr + ToString + PartialEq + std::fmt::Debug>(s: &str) {
    if let Ok(v) = s.parse::<T>() {
        let again: T = v.to_string().parse().ok().expect("printed form parses");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        round_trip::<MacAddr>(s);
        round_trip::<Hostname>(s);
        round_trip::<NodeId>(s);
        round_trip::<Ipv4Net>(s);
        round_trip::<JoinToken>(s);
        round_trip::<Fingerprint>(s);
    }
    let _ = serde_json::from_slice::<AllocateRequest>(data);
    let _ = serde_json::from_slice::<ConvergeRequest>(data);
    let _ = serde_json::from_slice::<JoinRequest>(data);
    let _ = serde_json::from_slice::<JoinResponse>(data);
    let _ = serde_json::from_slice::<Heartbeat>(data);
    let _ = serde_json::from_slice::<HeartbeatResponse>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    let _ = serde_json::from_slice::<AgentStatus>(data);
});
