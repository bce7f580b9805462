//! A raw stream entry: its id and its field/value pairs, as stored.
//!
//! Field values are kept as bytes: a poison message may hold anything, and it
//! must reach the dead letters byte for byte.

/// One entry of a stream: its id and its field/value pairs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<ms>-<seq>`).
    pub id: String,
    /// Field/value pairs as stored.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// The value of a field, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of a field as UTF-8 text, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Milliseconds since the epoch at which the entry was added (from its id).
    pub fn millis(&self) -> Option<u64> {
        id_millis(&self.id)
    }
}

/// The millisecond part of a stream id.
pub fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// The `(milliseconds, sequence)` of an entry id `ms-seq` (sequence 0 when
/// absent): the order Redis gives entries of one stream, and across
/// partitions the order of their time.
pub fn id_parts(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
