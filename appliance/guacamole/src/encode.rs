//! The encoder: instructions to bytes, with code-point lengths.

use std::fmt;

use crate::{Status, INTERNAL_OPCODE, PING};

/// An instruction with owned elements: for the few instructions a tunnel
/// interprets or makes (handshake, `sync`, `error`, internal ping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Instruction {
    /// The opcode; empty for tunnel-internal instructions.
    pub opcode: String,
    /// The arguments, in order.
    pub args: Vec<String>,
}

impl Instruction {
    /// An instruction from an opcode and its arguments.
    pub fn new<I>(opcode: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Instruction {
            opcode: opcode.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// `error,<message>,<status>;`: reports a failure to the client, with the
    /// Guacamole status code in decimal, as guacd and guacamole-client send it.
    pub fn error(message: &str, status: Status) -> Self {
        Instruction::new("error", [message.to_owned(), status.code().to_string()])
    }

    /// `sync,<timestamp>;`: the end of a frame, timestamp in milliseconds.
    pub fn sync(timestamp_ms: u64) -> Self {
        Instruction::new("sync", [timestamp_ms.to_string()])
    }

    /// `0.,36.<uuid>;`: the internal instruction a WebSocket tunnel sends
    /// first, giving the tunnel's UUID (hyphenated, 36 characters).
    pub fn tunnel_id(uuid: &str) -> Self {
        Instruction::new(INTERNAL_OPCODE, [uuid])
    }

    /// `0.,4.ping,<timestamp>;`: the internal ping guacamole-common-js sends;
    /// the tunnel answers with the same instruction, timestamp unchanged.
    pub fn ping(timestamp: &str) -> Self {
        Instruction::new(INTERNAL_OPCODE, [PING, timestamp])
    }

    /// `nop;`: keeps a connection alive.
    pub fn nop() -> Self {
        Instruction::new("nop", [""; 0])
    }

    /// `disconnect;`: ends the connection politely.
    pub fn disconnect() -> Self {
        Instruction::new("disconnect", [""; 0])
    }

    /// Whether this is a tunnel-internal instruction (empty opcode).
    pub fn is_internal(&self) -> bool {
        self.opcode == INTERNAL_OPCODE
    }

    /// The argument at `index`, if there is one.
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).map(String::as_str)
    }

    /// Appends the encoded instruction to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_instruction(out, &self.opcode, &self.args);
    }

    /// The encoded instruction.
    pub fn encode(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Instruction {
    /// Writes the wire form, `LEN.VALUE,...;`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_element_fmt(f, &self.opcode)?;
        for arg in &self.args {
            f.write_str(",")?;
            write_element_fmt(f, arg)?;
        }
        f.write_str(";")
    }
}

fn write_element_fmt(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    write!(f, "{}.{}", value.chars().count(), value)
}

/// Appends one instruction in wire form to `out`: each element's length is
/// its number of Unicode code points. Allocates nothing beyond growing `out`.
///
/// ```
/// let mut out = Vec::new();
/// daas_guacamole::write_instruction(&mut out, "name", ["日本😀"]);
/// assert_eq!(out, "4.name,3.日本😀;".as_bytes());
/// ```
pub fn write_instruction<I>(out: &mut Vec<u8>, opcode: &str, args: I)
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    write_element(out, opcode);
    for arg in args {
        out.push(b',');
        write_element(out, arg.as_ref());
    }
    out.push(b';');
}

/// Appends `LEN.VALUE` (no separator).
fn write_element(out: &mut Vec<u8>, value: &str) {
    write_decimal(out, value.chars().count());
    out.push(b'.');
    out.extend_from_slice(value.as_bytes());
}

fn write_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789"[n % 10];
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(instruction: Instruction, expect: &str) {
        let mut out = Vec::new();
        instruction.write_to(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expect);
        assert_eq!(instruction.encode(), expect);
    }

    #[test]
    fn encodes_code_point_lengths() {
        check(
            Instruction::new("sync", ["1700000000000"]),
            "4.sync,13.1700000000000;",
        );
        check(Instruction::new("name", ["é"]), "4.name,1.é;");
        check(Instruction::new("name", ["日本"]), "4.name,2.日本;");
        check(Instruction::new("name", ["😀"]), "4.name,1.😀;");
        check(Instruction::new("", [""]), "0.,0.;");
        check(Instruction::new("args", ["", "x"]), "4.args,0.,1.x;");
        let long = "x".repeat(12_345);
        check(
            Instruction::new("blob", [long.as_str()]),
            &format!("4.blob,12345.{long};"),
        );
    }

    #[test]
    fn convenience_constructors() {
        check(
            Instruction::error("Upstream unavailable", Status::UpstreamUnavailable),
            "5.error,20.Upstream unavailable,3.520;",
        );
        check(Instruction::error("", Status::Success), "5.error,0.,1.0;");
        check(
            Instruction::sync(1_700_000_000_000),
            "4.sync,13.1700000000000;",
        );
        check(Instruction::sync(0), "4.sync,1.0;");
        check(
            Instruction::tunnel_id("0f1e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"),
            "0.,36.0f1e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b;",
        );
        check(
            Instruction::ping("1700000000000"),
            "0.,4.ping,13.1700000000000;",
        );
        check(Instruction::nop(), "3.nop;");
        check(Instruction::disconnect(), "10.disconnect;");
        assert!(Instruction::ping("1").is_internal());
        assert!(!Instruction::nop().is_internal());
        assert_eq!(Instruction::sync(5).arg(0), Some("5"));
        assert_eq!(Instruction::sync(5).arg(1), None);
    }

    #[test]
    fn write_instruction_takes_any_strings_and_appends() {
        let mut out = b"3.nop;".to_vec();
        write_instruction(&mut out, "size", ["1024", "768"]);
        write_instruction(
            &mut out,
            "key",
            vec![String::from("65307"), String::from("1")],
        );
        write_instruction(&mut out, "nop", [""; 0]);
        assert_eq!(out, b"3.nop;4.size,4.1024,3.768;3.key,5.65307,1.1;3.nop;");
    }

    #[test]
    fn decimal() {
        for (n, s) in [
            (0usize, "0"),
            (9, "9"),
            (10, "10"),
            (8192, "8192"),
            (usize::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            write_decimal(&mut out, n);
            assert_eq!(out, s.as_bytes());
        }
    }
}
