//! What the fuzz targets share: reading a framed input, the protobuf round-trip check,
//! Kafka records, and the tenant the token targets validate against.
//!
//! Inputs are framed simply, so seeds can be written by `fuzz/seed_corpus.py` without
//! knowing `arbitrary`'s encoding: a target reads a few leading bytes (selectors, numbers),
//! then length-prefixed fields (`u16` little-endian length), then takes the rest.

use std::fmt::Debug;
use std::sync::Arc;

use pushrelay_kafka::Record;
use pushrelay_proto::Message;

pub mod tenant;

/// The time every target runs at (2027-01-15), so runs are reproducible.
pub const NOW_MS: i64 = 1_800_000_000_000;

/// A cursor over a fuzz input.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.rest.split_first() else {
            return 0;
        };
        self.rest = rest;
        first
    }

    /// The next little-endian `u16` (missing bytes read as 0).
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A field: a `u16` length, then that many bytes (fewer if the input ends first).
    pub fn field(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.rest.len());
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        field
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// Decodes `bytes` as `M`; when it decodes, checks that encoding it and decoding again
/// gives the same message, and that the encoding is stable. Returns the message.
pub fn round_trip<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = M::decode(encoded.as_slice()).expect("a re-encoded record decodes");
    assert_eq!(
        again, message,
        "decode → encode → decode changed the record"
    );
    assert_eq!(again.encode_to_vec(), encoded, "encoding is not stable");
    Some(message)
}

/// A Kafka record as a stage receives it.
pub fn record(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Record {
    Record {
        topic: Arc::from(topic),
        partition,
        offset,
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec),
        timestamp_ms: None,
    }
}
