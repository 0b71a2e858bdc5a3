//! Relay benchmark: the guacd engine's relay (`run_tunnel` with
//! `Upstream::Guacd`) against two references, on the same workloads, in the
//! same run, measured by the same Node WebSocket client (npm `ws`):
//!
//! - **guacamole-lite** (npm), the Node Guacamole proxy many products use;
//! - a **bare relay**: WebSocket↔TCP bytes with npm `ws`, no parsing at all
//!   (the floor any relay pays; it forwards partial instructions, so it is
//!   not a valid Guacamole tunnel).
//!
//! All three relay to the same synthetic guacd: the guacd stand-in of the
//! tests (`tests/support/guacd.rs`), which performs guacd 1.6's handshake,
//! then blasts a workload as fast as the relay reads:
//!
//! | workload | what | figure |
//! | --- | --- | --- |
//! | image | frames of `img` + 4 × 8 KiB base64 `blob` + `end` + `sync` | MB/s, best of 3; relay CPU per 100 MB |
//! | small | frames of `rect` + `cfill` + `sync` | instructions/s, best of 3; relay CPU per instruction |
//! | echo | a `key` answered by `rect` + `cfill` + `sync` | round trip p50/p99, minus the bare relay's |
//! | idle | N tunnels held open | RSS growth of the relay's process per tunnel |
//! | split | multi-byte text written in pieces that split characters and instructions | intact? whole messages? |
//!
//! Run (release; one command runs everything side by side):
//!
//! ```text
//! cargo run --release -p daas-gateway --example relay_bench [-- --quick]
//! ```
//!
//! It needs Node.js and the npm packages of `tests/js` (`npm ci` there; it
//! runs it when they are missing). Our tunnel server runs in a child process
//! of this binary (`--serve`), so that its RSS is the tunnel's alone;
//! guacamole-lite and the bare relay run in Node processes of their own; the
//! stand-in runs here. Times are wall-clock: on a shared machine, compare the
//! ratios of one run, not absolute figures across runs. Rounds interleave the
//! three relays, and each relay's CPU time (from `/proc`) is reported beside
//! its rate: CPU per byte or per instruction is what a busy machine distorts
//! least.

#[path = "../tests/support/guacd.rs"]
mod guacd;
#[path = "../tests/support/ws.rs"]
mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use daas_gateway::{TunnelConfig, Upstream};
use daas_guacamole::{write_instruction, Instruction};
use guacd::{Behavior, StandIn, Step};

/// A frame of the image workload: `img` + 4 × 8 KiB base64 `blob` + `end` + `sync`.
fn image_frame() -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x2545_F491_u32;
    let blob: String = (0..8192)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(alphabet[(state % 64) as usize])
        })
        .collect();
    let mut out = Vec::new();
    write_instruction(&mut out, "img", ["1", "14", "0", "image/png", "128", "64"]);
    for _ in 0..4 {
        write_instruction(&mut out, "blob", ["1", blob.as_str()]);
    }
    write_instruction(&mut out, "end", ["1"]);
    write_instruction(&mut out, "sync", ["1700000000000", "1"]);
    out
}

/// A frame of the small workload: `rect` + `cfill` + `sync`.
fn small_frame() -> Vec<u8> {
    let mut out = Vec::new();
    write_instruction(&mut out, "rect", ["0", "10", "20", "100", "200"]);
    write_instruction(&mut out, "cfill", ["14", "0", "255", "128", "0", "255"]);
    write_instruction(&mut out, "sync", ["1700000000000"]);
    out
}

/// The split workload: instructions with 2- and 3-byte characters (BMP:
/// guacamole-common-js 1.5 counts UTF-16 units), and where guacd's writes cut them.
fn split_workload() -> (Vec<Instruction>, Vec<u8>, Vec<usize>) {
    let texts = [
        "Grüße aus Köln",
        "日本語のテキスト",
        "€ 12,50; ½ · ✓",
        "Ĳssel—Œuvre",
        "ä",
    ];
    let mut list = Vec::new();
    for i in 0..200 {
        let t = texts[i % texts.len()];
        list.push(Instruction::new("name", [format!("{t} {i}")]));
        list.push(Instruction::new(
            "sync",
            [format!("{}", 1_700_000_000_000u64 + i as u64)],
        ));
    }
    let mut bytes = Vec::new();
    for i in &list {
        i.write_to(&mut bytes);
    }
    // Pieces of 1..=7 bytes: most cut a character or a length somewhere.
    let mut pieces = Vec::new();
    let (mut total, mut n) = (0, 1);
    while total < bytes.len() {
        pieces.push(n);
        total += n;
        n = n % 7 + 1;
    }
    (list, bytes, pieces)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn echo_reply() -> Vec<u8> {
    small_frame()
}

/// `--serve --guacd ADDR`: our tunnel server, in its own process.
async fn serve(guacd_addr: String) {
    let route: ws::Route = Arc::new(move |query: &[(String, String)]| {
        let workload = query
            .iter()
            .find(|(k, _)| k == "workload")
            .map_or("idle", |(_, v)| v.as_str())
            .to_owned();
        (
            Upstream::Guacd {
                addr: guacd_addr.clone(),
                tls: false,
                protocol: "vnc".into(),
                args: HashMap::from([
                    ("hostname".to_owned(), workload),
                    ("port".to_owned(), "5900".to_owned()),
                ]),
            },
            TunnelConfig::default(),
        )
    });
    let server = ws::TunnelServer::start("127.0.0.1:0", route).await;
    println!("LISTENING {}", server.addr);
    let _ = std::io::stdout().flush();
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` and waits for its `LISTENING addr` line.
fn spawn_listening(cmd: &mut Command, what: &str) -> (Proc, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("LISTENING ") {
                    break addr.to_owned();
                }
            }
            _ => panic!("{what} did not start"),
        }
    };
    // Keep draining its stdout so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), addr)
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let guacd = args.get(2).cloned().expect("--serve --guacd ADDR");
        return serve(guacd).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (image_frames, small_frames) = if quick {
        (500, 20_000)
    } else {
        (4000, 200_000)
    };

    let dir = js_dir();
    if !dir.join("node_modules/guacamole-lite").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm ci in {} failed: the benchmark needs Node.js and npm",
            dir.display()
        );
    }

    // The synthetic guacd, lenient as guacd 1.6 is (guacamole-lite answers
    // VERSION_1_1_0 and sends no `name`).
    let image = Arc::new(image_frame().repeat(50));
    let small = Arc::new(small_frame().repeat(1000));
    let (split_list, split_bytes, split_pieces) = split_workload();
    let image_repeat = image_frames / 50;
    let small_repeat = small_frames / 1000;
    let image_frame_bytes = image_frame().len();
    let choose: guacd::Chooser = {
        let (image, small) = (image.clone(), small.clone());
        let split = Step::Split {
            bytes: split_bytes,
            pieces: split_pieces,
            pause: Duration::from_micros(200),
        };
        Arc::new(move |values: &HashMap<String, String>| {
            match values.get("hostname").map(String::as_str) {
                Some("image") => Behavior::Blast {
                    payload: image.clone(),
                    repeat: image_repeat,
                },
                Some("small") => Behavior::Blast {
                    payload: small.clone(),
                    repeat: small_repeat,
                },
                Some("echo") => Behavior::Echo {
                    reply: echo_reply(),
                },
                Some("split") => Behavior::Script(vec![
                    split.clone(),
                    Step::Write(Instruction::disconnect().encode().into_bytes()),
                    Step::Sleep(Duration::from_secs(2)),
                    Step::Close,
                ]),
                _ => Behavior::Script(vec![]),
            }
        })
    };
    let standin = StandIn::start_lenient("127.0.0.1:0", guacd::VNC_ARGS, choose).await;
    let guacd_addr = standin.addr_string();

    let exe = std::env::current_exe().unwrap();
    let (ours, ours_addr) = spawn_listening(
        Command::new(&exe).args(["--serve", "--guacd", &guacd_addr]),
        "our tunnel server",
    );
    let (lite, lite_addr) = spawn_listening(
        Command::new("node")
            .arg("bench.js")
            .arg("lite")
            .arg(&guacd_addr)
            .current_dir(&dir),
        "guacamole-lite",
    );
    let (bare, bare_addr) = spawn_listening(
        Command::new("node")
            .arg("bench.js")
            .arg("bare")
            .arg(&guacd_addr)
            .current_dir(&dir),
        "the bare relay",
    );

    let expect_path =
        std::env::temp_dir().join(format!("relay-bench-split-{}.json", std::process::id()));
    let expect_json = format!(
        "[{}]",
        split_list
            .iter()
            .map(|i| {
                let mut e = vec![json_string(&i.opcode)];
                e.extend(i.args.iter().map(|a| json_string(a)));
                format!("[{}]", e.join(","))
            })
            .collect::<Vec<_>>()
            .join(",")
    );
    std::fs::write(&expect_path, expect_json).unwrap();

    println!(
        "relay_bench: {} image frames of {} bytes, {} small frames; Node {}",
        image_frames,
        image_frame_bytes,
        small_frames,
        Command::new("node")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    );
    let mut client = Command::new("node");
    client
        .arg("bench.js")
        .arg("client")
        .args(["--ours", &format!("ws://{ours_addr}/api/v1/tunnel")])
        .args(["--lite", &format!("ws://{lite_addr}")])
        .args(["--bare", &format!("ws://{bare_addr}")])
        .args(["--pid-ours", &ours.0.id().to_string()])
        .args(["--pid-lite", &lite.0.id().to_string()])
        .args(["--pid-bare", &bare.0.id().to_string()])
        .args(["--image-frames", &image_frames.to_string()])
        .args(["--image-frame-bytes", &image_frame_bytes.to_string()])
        .args(["--small-frames", &small_frames.to_string()])
        .args(["--reply-bytes", &echo_reply().len().to_string()])
        .args(["--split-expect", expect_path.to_str().unwrap()])
        .current_dir(&dir);
    if quick {
        client.arg("--quick");
    }
    // The client is synchronous work for this thread; the stand-in runs on
    // the runtime's other threads meanwhile.
    let status = tokio::task::spawn_blocking(move || client.status())
        .await
        .unwrap();
    let _ = std::fs::remove_file(&expect_path);
    drop((ours, lite, bare));
    assert!(
        status.is_ok_and(|s| s.success()),
        "the benchmark client failed"
    );
}
