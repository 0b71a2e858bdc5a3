//! Decoding a stream pushed in given chunks, and what came out.

use daas_guacamole::{DecodeError, Decoder, Instruction, Limits};

/// One instruction as the decoder returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Stream offset of its first byte.
    pub(crate) offset: u64,
    /// Its exact text.
    pub(crate) raw: String,
    pub(crate) opcode: String,
    pub(crate) internal: bool,
    /// From `RawInstruction::to_instruction`.
    pub(crate) owned: Instruction,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// At an instruction boundary.
    Clean,
    /// With an incomplete instruction of this many bytes.
    Incomplete(usize),
    Failed(DecodeError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) instructions: Vec<Decoded>,
    pub(crate) end: End,
}

/// Pushes `input` cut at `cuts` (any order, any values: taken modulo the
/// length), draining the decoder after every push with `next_raw`.
pub(crate) fn decode_split(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if input.is_empty() {
                0
            } else {
                c % (input.len() + 1)
            }
        })
        .collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    let mut decoder = Decoder::with_limits(limits);
    let mut instructions = Vec::new();
    for pair in points.windows(2) {
        if let Err(e) = decoder.push(&input[pair[0]..pair[1]]) {
            return Outcome {
                instructions,
                end: End::Failed(e),
            };
        }
        loop {
            match decoder.next_raw() {
                Ok(Some(raw)) => instructions.push(Decoded {
                    offset: raw.offset(),
                    raw: raw.as_str().to_owned(),
                    opcode: raw.opcode().to_owned(),
                    internal: raw.is_internal(),
                    owned: raw.to_instruction(),
                }),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        instructions,
                        end: End::Failed(e),
                    }
                }
            }
        }
    }
    let end = match decoder.buffered_len() {
        0 => End::Clean,
        n => End::Incomplete(n),
    };
    Outcome { instructions, end }
}

/// Decodes with the owned API only, all bytes in one push.
pub(crate) fn decode_owned(
    limits: Limits,
    input: &[u8],
) -> (Vec<Instruction>, Option<DecodeError>) {
    let mut decoder = Decoder::with_limits(limits);
    let mut out = Vec::new();
    if let Err(e) = decoder.push(input) {
        return (out, Some(e));
    }
    loop {
        match decoder.next_instruction() {
            Ok(Some(i)) => out.push(i),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The encoded form of a list of instructions.
pub(crate) fn encode_all(instructions: &[Instruction]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in instructions {
        daas_guacamole::write_instruction(&mut out, &i.opcode, &i.args);
    }
    out
}
