//! The Lua scripts that make Redis the sequencer, the history and the lease table. Each is
//! one round trip and atomic; `redis::Script` sends EVALSHA and loads the script on NOSCRIPT.
//!
//! Epoch rule (`../shared/scaleout.md` §4): a new epoch only when the instance's meta is
//! missing (first use, expiry, eviction, Redis wiped) or Redis's `run_id` differs from the one
//! stored with the epoch (a restart or failover may have rolled entries back). The epoch is
//! created by the caller (`Epoch::random`) and used only when one is needed. Both the publish
//! and the history script check `run_id` (`INFO server`, tens of µs): whichever runs first
//! after a restart makes the new epoch, so no seq of the old one is ever reused.

use std::sync::LazyLock;

use redis::Script;

/// `run_id` of the Redis process; kept with the epoch it made.
const RUN_ID: &str = r"
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end
";

/// KEYS: meta, log, lease, idem ('' = none).
/// ARGV: 1 owner ('' = a push: no fence), 2 epoch candidate, 3 version ('' = none), 4 maxlen,
/// 5 ttl ms, 6 data, 7 event, 8 content type, 9 now ms, 10 idempotency ttl ms, 11 channel,
/// 12.. continuity field/value pairs (stored in meta).
/// Returns {'ok', epoch, seq} | {'dup', epoch, seq} | {'fenced'}.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RUN_ID}{}",
        r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {'fenced'}
end
if KEYS[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local e, s = string.match(seen, '^(%w+)-(%d+)$')
    return {'dup', e, s}
  end
end
local e = redis.call('HGET', KEYS[1], 'e')
local rid = run_id()
if e and redis.call('HGET', KEYS[1], 'rid') ~= rid then
  -- Redis restarted or failed over since the epoch was made: entries after its last fsync
  -- may be gone, and their seqs would be handed out again for other content.
  e = nil
end
if not e then
  e = ARGV[2]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 'rid', rid)
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'v') == ARGV[3] then
  return {'dup', e, redis.call('HGET', KEYS[1], 's')}
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], s .. '-0',
  'd', ARGV[6], 'e', ARGV[7], 'c', ARGV[8], 't', ARGV[9])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[3])
end
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if KEYS[4] ~= '' then
  redis.call('SET', KEYS[4], e .. '-' .. s, 'PX', ARGV[10])
end
redis.call('PUBLISH', ARGV[11], e .. ':' .. s .. '\n' .. ARGV[7] .. '\n' .. ARGV[8] .. '\n' .. ARGV[6])
return {'ok', e, s}
"
    ))
});

/// KEYS: meta, log. ARGV: 1 epoch candidate, 2 since seq ('' = the newest `count`), 3 count,
/// 4 ttl ms. Creates the epoch if there is none (so every sidecar starts on the same one),
/// starts a new one if Redis's run_id changed.
/// Returns {epoch, top, first retained seq (top + 1 when empty), stale reason ('' = fresh),
/// entries…}; each entry is {id, {field, value, …}}, oldest first.
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RUN_ID}{}",
        r"
local e = redis.call('HGET', KEYS[1], 'e')
local rid = run_id()
if e and redis.call('HGET', KEYS[1], 'rid') ~= rid then
  e = nil
end
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 'rid', rid)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local top = tonumber(redis.call('HGET', KEYS[1], 's'))
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first = top + 1
if #oldest > 0 then
  first = tonumber(string.match(oldest[1][1], '^(%d+)'))
end
local entries
if ARGV[2] == '' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
  local n = #entries
  for i = 1, math.floor(n / 2) do
    entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
  end
else
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
end
local reply = {e, top, first, redis.call('HGET', KEYS[1], 'stale') or ''}
for i = 1, #entries do
  reply[#reply + 1] = entries[i]
end
return reply
"
    ))
});

/// KEYS: lease, meta. ARGV: 1 holder (`instance:nonce`), 2 ttl ms.
/// Returns the meta hash (continuity state) as a flat list when the lease was taken, or nil.
/// Meta written before Redis restarted (another `run_id`) is not handed over: its epoch is
/// about to be replaced, and a holder resuming its validators or content hash would find the
/// backend "unchanged" and leave the new epoch without its current state.
pub static LEASE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RUN_ID}{}",
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local meta = {}
  if redis.call('HGET', KEYS[2], 'rid') == run_id() then
    meta = redis.call('HGETALL', KEYS[2])
  end
  meta[#meta + 1] = 'lease'
  meta[#meta + 1] = ARGV[1]
  return meta
end
return false
"
    ))
});

/// KEYS: lease. ARGV: 1 holder. Deletes the lease only if it is still ours.
pub static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// KEYS: lease. ARGV: 1 holder, 2 ttl ms. 1 when still ours (and extended), else 0.
/// The renew script's text, for pipelines (which send EVAL, see `Store::renew`).
pub const LEASE_RENEW_TEXT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";
