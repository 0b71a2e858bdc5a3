//! guacd → browser relay: splits anywhere (inside lengths, inside UTF-8
//! characters) yield the same instructions in whole messages, and a slow
//! browser pushes back to guacd's TCP connection.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::guacd::{Behavior, Step};
use crate::ws::{self, read_until};

const SECOND: Duration = Duration::from_secs(1);

/// guacd output rich in multi-byte characters (2, 3 and 4 bytes in UTF-8).
fn multibyte_stream() -> String {
    let mut s = String::new();
    s += &ins("name", &["Ĳssel — 日本語 😀👋🏽"]);
    s += &ins("clipboard", &["3", "text/plain"]);
    s += &ins("blob", &["3", "ä€😀,;.0"]);
    s += &ins("end", &["3"]);
    s += &ins("rect", &["0", "10", "20", "100", "200"]);
    s += &ins("sync", &["1700000000000"]);
    s
}

async fn relay_with_pieces(pieces: Vec<usize>, pause: Duration) {
    let stream = multibyte_stream();
    let step = Step::Split {
        bytes: stream.clone().into_bytes(),
        pieces,
        pause,
    };
    let (_guacd, server) = setup(Behavior::Script(vec![step])).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_until(&mut client, "13.1700000000000;", 10 * SECOND).await;
    assert_whole(&seen.texts);
    assert_eq!(seen.texts[1..].concat(), stream);
}

#[tokio::test]
async fn every_byte_split_yields_the_same_instructions() {
    // One byte per write: every boundary, including inside each multi-byte
    // character and each length prefix, is a split.
    let len = multibyte_stream().len();
    relay_with_pieces(vec![1; len], Duration::from_millis(1)).await;
}

#[tokio::test]
async fn split_at_each_offset_yields_the_same_instructions() {
    let len = multibyte_stream().len();
    let mut tunnels = Vec::new();
    for at in 1..len {
        tunnels.push(relay_with_pieces(vec![at], Duration::from_millis(5)));
    }
    futures_util::future::join_all(tunnels).await;
}

#[tokio::test]
async fn instructions_split_across_writes_in_many_patterns() {
    let len = multibyte_stream().len();
    let mut state = 0x9E37_79B9_u32;
    for _ in 0..20 {
        let mut pieces = Vec::new();
        let mut total = 0;
        while total < len {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let p = 1 + (state % 13) as usize;
            pieces.push(p);
            total += p;
        }
        relay_with_pieces(pieces, Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn large_output_is_batched_in_whole_messages_under_the_cap() {
    let blob = "A".repeat(8192);
    let mut frame = ins("img", &["1", "14", "0", "image/png", "0", "0"]);
    for _ in 0..4 {
        frame += &ins("blob", &["1", &blob]);
    }
    frame += &ins("end", &["1"]);
    frame += &ins("sync", &["1700000000001"]);
    let total = frame.repeat(50);
    let (_guacd, server) = setup(Behavior::Script(vec![Step::Write(
        total.clone().into_bytes(),
    )]))
    .await;
    let mut client = ws::connect(&server.url("")).await;
    let mut texts = Vec::new();
    let mut got = 0;
    while got < total.len() + 43 {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(5 * SECOND, client.next())
            .await
            .unwrap()
        else {
            panic!("stream ended early");
        };
        got += t.len();
        texts.push(t.as_str().to_owned());
    }
    assert_whole(&texts);
    assert_eq!(texts[1..].concat(), total);
    assert!(
        texts.iter().all(|t| t.len() <= 64 * 1024),
        "messages stay under the cap"
    );
    assert!(
        texts.len() < 50 * 6,
        "instructions are batched: {} messages",
        texts.len()
    );
}

#[tokio::test]
async fn a_slow_browser_pushes_back_to_guacd() {
    // guacd floods; the browser reads nothing. The tunnel must stop reading
    // guacd, so guacd's writes block after what the buffers on the way hold.
    let chunk = (ins("blob", &["1", &"Q".repeat(8000)]) + &ins("sync", &["1"])).into_bytes();
    let limit = 256 * 1024 * 1024;
    let flood = Step::Flood {
        chunk: chunk.clone(),
        max_bytes: limit,
        block: Duration::from_millis(500),
    };
    // The browser sends nothing meanwhile: no idle timeout during the test.
    let cfg = daas_gateway::TunnelConfig {
        idle_timeout: 120 * SECOND,
        ..test_config()
    };
    let (guacd, server) = setup_with(Behavior::Script(vec![flood]), "vnc", cfg).await;
    let mut client = ws::connect(&server.url("")).await;
    let started = std::time::Instant::now();
    let s = guacd
        .wait_for(60 * SECOND, |s| s.blocked)
        .await
        .expect("guacd's writes block while the browser does not read");
    // Loopback socket buffers (both TCP connections) plus one message of
    // 64 KiB in the tunnel: a few MiB at most, far below the flood.
    assert!(
        s.blocked_at < 32 * 1024 * 1024,
        "{} bytes went out before blocking",
        s.blocked_at
    );
    eprintln!(
        "guacd blocked after {} bytes, {:?}",
        s.blocked_at,
        started.elapsed()
    );
    // Now the browser reads: everything arrives, intact and whole.
    let mut texts = Vec::new();
    let mut got = 0u64;
    let expect = guacd.sessions()[0].written;
    while got < expect + 43 {
        let m = tokio::time::timeout(10 * SECOND, client.next())
            .await
            .unwrap();
        let Some(Ok(Message::Text(t))) = m else {
            panic!("stream ended early after {got} of {expect} bytes: {m:?}");
        };
        got += t.len() as u64;
        texts.push(t.as_str().to_owned());
    }
    assert_whole(&texts);
    let all = texts[1..].concat();
    assert_eq!(all.len() as u64, guacd.sessions()[0].written);
    assert!(all
        .as_bytes()
        .chunks(chunk.len())
        .all(|c| c == chunk.as_slice()));
}
