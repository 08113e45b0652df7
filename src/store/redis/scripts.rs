//! The Lua scripts of the Redis store, one per operation, and `Scripts`, which holds them.

use redis::Script;

// Values are `<fingerprint>:<saved at, ms by the server's TIME>:<payload>`. The save time is
// the server's, and so is the "now" every read returns beside the values: a reader computes an
// entry's age from two readings of one clock, never from a replica's wall clock.
//
// Announcements (`PUBLISH`) are best effort (`pcall`): a user whose ACL has no channel
// permission still writes; its waiters poll.

/// Writes an entry stamped with the server's time, and announces it on the key's channel.
/// KEYS: the entry. ARGV: fingerprint, payload, time-to-live (ms), channel.
const SAVE: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. now .. ':' .. ARGV[2], 'PX', ARGV[3])
redis.pcall('PUBLISH', ARGV[4], 'saved')
return 1";

/// Both entries and the server's time. KEYS: token, failure.
const LOAD: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), now}";

/// Takes the lease if free and reads both entries, atomically. KEYS: token, failure, lease.
/// ARGV: owner, time-to-live (ms).
const ACQUIRE_LEASE: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local taken = 0
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
  taken = 1
end
return {taken, redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), now}";

/// Compare-and-delete on the fingerprint that starts the value, announced on the key's
/// channel. ARGV: `<fingerprint>:`, channel.
const REMOVE_IF: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], 'removed')
  return 1
end
return 0";

/// Redis' single-instance lock recipe: renew and release only by the owner.
const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// ARGV: owner, channel.
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0";

/// The Lua scripts (each loaded by hash, sent in full once per server).
#[derive(Clone)]
pub(super) struct Scripts {
    pub(super) save: Script,
    pub(super) load: Script,
    pub(super) acquire_lease: Script,
    pub(super) remove_if: Script,
    pub(super) renew_lease: Script,
    pub(super) release_lease: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            save: Script::new(SAVE),
            load: Script::new(LOAD),
            acquire_lease: Script::new(ACQUIRE_LEASE),
            remove_if: Script::new(REMOVE_IF),
            renew_lease: Script::new(RENEW_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
        }
    }
}
