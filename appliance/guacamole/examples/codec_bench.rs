//! Micro-benchmark of the Guacamole decoder, against two references measured
//! in the same run: `std::str::from_utf8` over the same bytes (the least any
//! relay that hands the browser valid text must do) and a plain
//! character-by-character decoder (what seed 004 calls byte-by-byte parsing).
//!
//! Run: `cargo run --release -p daas-guacamole --example codec_bench [FILTER]`
//! (FILTER keeps the workloads whose name contains it, e.g. `small`).
//!
//! Times are the thread's CPU time where Linux provides it, so that a busy
//! shared machine slows the figures less; each decoder's best round counts.
//!
//! Workloads, pushed in 16 KiB chunks as a socket read would deliver them:
//! - image frames: `img` + 4 × `blob` of 8 KiB base64 + `end` + `sync`;
//! - small instructions: `rect` + `cfill` + `sync`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use daas_guacamole::{write_instruction, Decoder};

const CHUNK: usize = 16 * 1024;
const ROUNDS: usize = 5;
const MIN_TIME: Duration = Duration::from_millis(200);

fn image_frames(frames: usize) -> Vec<u8> {
    // Deterministic base64-alphabet filler.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x2545_F491_u32;
    let mut blob = String::with_capacity(8192);
    for _ in 0..8192 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        blob.push(char::from(alphabet[(state % 64) as usize]));
    }
    let mut out = Vec::new();
    for frame in 0..frames {
        let ts = (1_700_000_000_000u64 + frame as u64 * 16).to_string();
        write_instruction(&mut out, "img", ["1", "14", "0", "image/png", "128", "64"]);
        for _ in 0..4 {
            write_instruction(&mut out, "blob", ["1", blob.as_str()]);
        }
        write_instruction(&mut out, "end", ["1"]);
        write_instruction(&mut out, "sync", [ts.as_str(), "1"]);
    }
    out
}

fn small_instructions(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in 0..frames {
        let ts = (1_700_000_000_000u64 + frame as u64 * 16).to_string();
        write_instruction(&mut out, "rect", ["0", "10", "20", "100", "200"]);
        write_instruction(&mut out, "cfill", ["14", "0", "255", "128", "0", "255"]);
        write_instruction(&mut out, "sync", [ts.as_str()]);
    }
    out
}

/// Scan only: boundaries and opcodes, nothing copied. Returns instructions.
fn scan(stream: &[u8]) -> usize {
    let mut decoder = Decoder::new();
    let mut n = 0;
    let mut internal = 0;
    for chunk in stream.chunks(CHUNK) {
        decoder.push(chunk).expect("valid stream");
        while let Some(raw) = decoder.next_raw().expect("valid stream") {
            internal += usize::from(raw.is_internal());
            n += 1;
        }
    }
    black_box(internal);
    n
}

/// What the tunnel does: scan, and copy the non-internal instructions of each
/// read into one outgoing message.
fn relay(stream: &[u8]) -> usize {
    let mut decoder = Decoder::new();
    let mut message = Vec::with_capacity(2 * CHUNK);
    let mut n = 0;
    for chunk in stream.chunks(CHUNK) {
        decoder.push(chunk).expect("valid stream");
        while let Some(raw) = decoder.next_raw().expect("valid stream") {
            if !raw.is_internal() {
                message.extend_from_slice(raw.as_bytes());
            }
            n += 1;
        }
        black_box(&message);
        message.clear();
    }
    n
}

/// Owned decode of every instruction.
fn owned(stream: &[u8]) -> usize {
    let mut decoder = Decoder::new();
    let mut n = 0;
    for chunk in stream.chunks(CHUNK) {
        decoder.push(chunk).expect("valid stream");
        while let Some(instruction) = decoder.next_instruction().expect("valid stream") {
            black_box(&instruction);
            n += 1;
        }
    }
    n
}

/// Reference: UTF-8 validation alone, chunk by chunk (the streams are ASCII,
/// so no chunk splits a character).
fn reference_from_utf8(stream: &[u8]) -> usize {
    let mut valid = 0;
    for chunk in stream.chunks(CHUNK) {
        valid += std::str::from_utf8(chunk).map_or(0, str::len);
    }
    valid
}

/// Reference: a plain decoder that walks every character, over the whole
/// stream at once (so it is spared the streaming).
fn reference_char_by_char(stream: &[u8]) -> usize {
    let text = std::str::from_utf8(stream).expect("valid stream");
    let mut chars = text.chars();
    let mut n = 0;
    'instructions: loop {
        loop {
            let mut len = 0usize;
            loop {
                match chars.next() {
                    Some('.') => break,
                    Some(c) => len = len * 10 + c.to_digit(10).expect("digit") as usize,
                    None => break 'instructions,
                }
            }
            for _ in 0..len {
                black_box(chars.next());
            }
            match chars.next() {
                Some(',') => continue,
                Some(';') => break,
                other => panic!("bad separator {other:?}"),
            }
        }
        n += 1;
    }
    n
}

type Decode = fn(&[u8]) -> usize;

/// CPU time this thread has run, from Linux's `/proc/thread-self/schedstat`
/// (nanoseconds on CPU, first field): on a shared machine, time spent
/// waiting for a core does not count against the code measured.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// A clock: CPU time where Linux gives it, else wall time.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => self.wall.elapsed(),
        }
    }
}

/// Seconds per pass over `stream`: the best of [`ROUNDS`] rounds, each
/// repeating the pass for at least [`MIN_TIME`]. The decoders take turns
/// round by round, so that they share whatever load the machine has.
fn measure(stream: &[u8], decoders: &[(&str, Decode, usize)]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; decoders.len()];
    for _ in 0..ROUNDS {
        for (slot, (name, decode, expect)) in best.iter_mut().zip(decoders) {
            let clock = Clock::start();
            let mut passes = 0u32;
            while clock.elapsed() < MIN_TIME {
                let n = decode(black_box(stream));
                assert_eq!(n, *expect, "{name}");
                passes += 1;
            }
            *slot = slot.min(clock.elapsed().as_secs_f64() / f64::from(passes));
        }
    }
    best
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let clock = if cpu_time().is_some() {
        "thread CPU time"
    } else {
        "wall time"
    };
    println!(
        "daas-guacamole codec_bench: {CHUNK}-byte pushes, best of {ROUNDS} interleaved rounds of >= {MIN_TIME:?} {clock}, {cores} cores visible"
    );
    let workloads = [
        ("image frames", image_frames(100), 100 * 7),
        ("small instructions", small_instructions(20_000), 20_000 * 3),
    ];
    println!();
    println!(
        "{:<20} {:<28} {:>9} {:>10} {:>16}",
        "workload", "decoder", "MB/s", "instr/s", "vs char-by-char"
    );
    // An optional argument keeps only the workloads whose name contains it.
    let filter = std::env::args().nth(1).unwrap_or_default();
    for (name, stream, instructions) in workloads.iter().filter(|w| w.0.contains(&filter)) {
        let n = *instructions;
        let decoders: [(&str, Decode, usize); 5] = [
            ("scan (next_raw)", scan, n),
            ("relay (scan + copy out)", relay, n),
            ("owned (next_instruction)", owned, n),
            (
                "ref: str::from_utf8 only",
                reference_from_utf8,
                stream.len(),
            ),
            ("ref: char-by-char decoder", reference_char_by_char, n),
        ];
        let seconds = measure(stream, &decoders);
        let naive = seconds[4];
        for ((what, _, _), secs) in decoders.iter().zip(&seconds) {
            let rate = if what.starts_with("ref: str") {
                "-".to_owned()
            } else {
                format!("{:.2e}", n as f64 / secs)
            };
            println!(
                "{:<20} {:<28} {:>9.0} {:>10} {:>15.2}x",
                name,
                what,
                stream.len() as f64 / secs / 1e6,
                rate,
                naive / secs
            );
        }
        println!("{:<20} ({} bytes, {} instructions)", "", stream.len(), n);
    }
}
