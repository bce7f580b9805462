//! The `dead-letters` stream: the atomic move of a message there.
//!
//! The entry format is the contract's ([`contract::dead_letter`]). The move is
//! one Lua script: `XACK` the original, and only if that removed it from the
//! pending list, `XADD` the dead letter. A script runs atomically and reaches
//! the AOF as one unit, so a crash leaves either both effects or neither, and
//! two consumers racing to dead-letter the same message produce one dead
//! letter.

use contract::redis::Conn;
use contract::{
    StreamEntry,
    dead_letter::{Reason, fields},
    entry::id_millis,
};
use redis::Script;

/// Moves a pending message to the dead letters and acknowledges it, atomically.
/// KEYS: origin stream, dead-letter stream, last-error hash.
/// ARGV: group, entry id, then the dead letter's field/value pairs.
/// Returns 1 when moved, 0 when the entry was no longer pending (already
/// acknowledged or moved by someone else).
const MOVE_SCRIPT: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
";

/// Everything needed to dead-letter one message.
#[derive(Debug)]
pub(crate) struct MoveRequest<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub dead_letters: &'a str,
    pub errors_key: &'a str,
    pub entry: &'a StreamEntry,
    pub reason: Reason,
    pub error: &'a str,
    pub attempts: u32,
}

/// Runs the move script; `Ok(true)` when this call moved the message.
pub(crate) async fn move_and_ack(
    conn: &mut Conn,
    req: MoveRequest<'_>,
) -> redis::RedisResult<bool> {
    static SCRIPT: std::sync::LazyLock<Script> =
        std::sync::LazyLock::new(|| Script::new(MOVE_SCRIPT));
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut inv = SCRIPT.key(req.stream);
    inv.key(req.dead_letters)
        .key(req.errors_key)
        .arg(req.group)
        .arg(&req.entry.id);
    inv.arg(fields::ORIGIN_STREAM).arg(req.stream);
    inv.arg(fields::ORIGIN_ID).arg(&req.entry.id);
    inv.arg(fields::GROUP).arg(req.group);
    inv.arg(fields::CONSUMER).arg(req.consumer);
    inv.arg(fields::REASON).arg(req.reason.as_str());
    inv.arg(fields::ERROR).arg(req.error);
    inv.arg(fields::ATTEMPTS).arg(req.attempts);
    inv.arg(fields::FIRST_SEEN_MS)
        .arg(id_millis(&req.entry.id).unwrap_or(0));
    inv.arg(fields::DEAD_LETTERED_MS).arg(now_ms);
    for (k, v) in &req.entry.fields {
        inv.arg(format!("{}{k}", fields::ORIGINAL_PREFIX))
            .arg(v.as_slice());
    }
    let moved: i64 = inv.invoke_async(conn).await?;
    Ok(moved == 1)
}
