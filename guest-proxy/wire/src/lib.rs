//! The guest-proxy wire protocol, shared by `daas-guest-proxy` (in the guest)
//! and the appliance (over SSH). Pure: no IO, no threads.
//!
//! * [`frame`]: the byte layer: length-prefixed frames, an encoder and an
//!   incremental [`Decoder`].
//! * [`message`]: the JSON control messages: the proxy's [`Hello`], requests
//!   ([`Operation`], one argument struct per operation, each with its result
//!   type through [`Op`]), events, results and typed errors.
//! * [`client`]: [`ClientCodec`], the appliance's side of a session.
//!
//! See `docs/guest-proxy.md` for the protocol reference.

pub mod client;
pub mod frame;
pub mod message;

pub use client::{ClientCodec, Incoming, SessionError};
pub use frame::{
    Decoder, Frame, FrameError, FrameType, Stream, BULK_CHUNK, MAX_DATA_CHUNK, MAX_PAYLOAD,
};
pub use message::{
    decode_result, ClientMessage, ErrorCode, Event, Hello, Limits, Op, Operation, Request,
    ServerMessage, WireError, OPERATIONS, PROGRAM_NAME, PROTOCOL_VERSION,
};
