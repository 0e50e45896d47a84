//! The Lua scripts that keep presence consistent, and the one that publishes a
//! batch. Each runs atomically in Redis, with Redis's own clock (`TIME`), so
//! nodes' clocks need not agree.
//!
//! Every presence script gets the key base `{prefix}` as `ARGV[1]` (the publish
//! script touches no key), and as its one `KEYS` entry, unread: on Redis Cluster
//! that sends the call to the master owning the slot of every key below. Keys:
//!
//! | Key | Type | Holds |
//! | --- | --- | --- |
//! | `B:nodes` | sorted set | node → heartbeat deadline (ms) |
//! | `B:info:N` | hash | node N's `clients`, `subscriptions`, `gaps`, `ttl`, `beat` (ms), `run`, ... |
//! | `B:keys` | hash | client key → `gen|node` |
//! | `B:gen` | counter | the last claim generation (at least the time in µs) |
//! | `B:nkeys:N` | set | keys node N holds |
//! | `B:members:T` | hash | node → member count of the session with token T |
//! | `B:nsess:N` | set | session tokens node N counts members in |
//! | `B:reaping` | sorted set | dead node → when its release began |
//! | `B:rlist:N` | list | keys of dead node N released so far, to list |
//! | `B:romit:N` | counter | keys of dead node N released beyond the list |

/// The time in milliseconds, and a helper reading the node out of `gen|node`.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local B = ARGV[1]
local function holder(v)
  if not v then return nil end
  local i = string.find(v, '|', 1, true)
  if not i then return nil end
  return string.sub(v, i + 1)
end
local function alive(n)
  local s = redis.call('ZSCORE', B .. ':nodes', n)
  return s and tonumber(s) >= now
end
";

/// ARGV: base, node, ttl ms, this process's run token, then field/value pairs for
/// the node's info hash. Returns `{known, now, clash}`: known is 1 for a renewal,
/// 0 if the node is new to this Redis; now is Redis's time in ms; clash is 1 when
/// the live node's last beat came from another process (another run token).
const HEARTBEAT: &str = r"
local node, ttl, run = ARGV[2], tonumber(ARGV[3]), ARGV[4]
REAPING
local known = redis.call('ZSCORE', B .. ':nodes', node)
local info = B .. ':info:' .. node
local other = redis.call('HGET', info, 'run')
local clash = 0
if known and other and other ~= run then clash = 1 end
redis.call('ZADD', B .. ':nodes', now + ttl, node)
for i = 5, #ARGV, 2 do redis.call('HSET', info, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', info, 'beat', string.format('%d', now), 'run', run)
redis.call('PEXPIRE', info, ttl * 2)
if known then return { 1, now, clash } else return { 0, now, clash } end
";

/// ARGV: deadline ms, a batch's runs (`batch.rs`: `[channel index: u16][count:
/// u16]`, big-endian, back to back), the number of channels, the channels the
/// indexes name, then the frames in order, each run naming the channel of the
/// next `count`. Publishes every frame unless Redis's clock is past the deadline:
/// a batch the client replays after a reconnect, when its callers were already
/// told it failed, is refused here. Returns how many it published, or -1.
///
/// It runs on every batch, so it carries no [`PRELUDE`]: only the time, which is
/// all it reads, and no key base or helper functions to define per call.
/// [`publish`] puts the node's id in front of it.
const PUBLISH: &str = r"
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return -1
end
local runs, call = ARGV[2], redis.call
local first = 4 + tonumber(ARGV[3])
local i = first
for r = 1, #runs - 3, 4 do
  local c1, c2, n1, n2 = string.byte(runs, r, r + 3)
  local channel, last = ARGV[4 + c1 * 256 + c2], i + n1 * 256 + n2 - 1
  for j = i, last do call('PUBLISH', channel, ARGV[j]) end
  i = last + 1
end
return i - first
";

/// The publish script of node `node` ([`PUBLISH`]): a text no other node's
/// publisher sends, so that only this node's publisher ever loads it into
/// Redis's script cache. The publisher relies on that to resend, in order, the
/// batches Redis refused for a missing script (`publisher.rs`). A node id is
/// letters, digits and `._-` (`envelope::valid_node_id`), so it cannot end the
/// comment.
pub(crate) fn publish(node: &str) -> String {
    format!("-- the publisher of node {node}{PUBLISH}")
}

/// ARGV: base, ctl channel, node or '', most keys listed per node. Returns how
/// many nodes are still being released; the caller calls again until none is.
///
/// Takes every expired node (or the one named, if Redis knows it: on a clean
/// shutdown, or a restart under the same id), at most [`REAP_BATCH`] per call, out
/// of `B:nodes` into `B:reaping`, where nothing counts it live. Then releases one
/// chunk of one node being released (the named one first): at most
/// [`RELEASE_CHUNK`] of its keys and member counts in all, so that one call's
/// work is bounded however much it held, and Redis serves its other clients
/// between calls. Keys it lists go to `B:rlist:N` (at most the limit), the
/// others are counted in `B:romit:N`. The call that finds nothing left announces
/// the node on the ctl channel with that list and count (`omitted`).
///
/// A node being released refuses its own heartbeats, claims and counts
/// ([`REAPING`]) until it is released; its next heartbeat then finds it unknown,
/// and it announces itself again.
const DOWN: &str = r"
local ctl, max, R = ARGV[2], tonumber(ARGV[4]), B .. ':reaping'
local dead
if ARGV[3] ~= '' then
  dead = {}
  if redis.call('ZSCORE', B .. ':nodes', ARGV[3]) then dead = { ARGV[3] } end
else dead = redis.call('ZRANGEBYSCORE', B .. ':nodes', '-inf', '(' .. now, 'LIMIT', 0, REAP_BATCH) end
for _, n in ipairs(dead) do
  redis.call('ZREM', B .. ':nodes', n)
  redis.call('ZADD', R, 'NX', now, n)
end
local n = ARGV[3]
if n == '' or not redis.call('ZSCORE', R, n) then n = redis.call('ZRANGE', R, 0, 0)[1] end
if not n then return 0 end
local list, omit = B .. ':rlist:' .. n, B .. ':romit:' .. n
local budget = RELEASE_CHUNK
local keys = redis.call('SPOP', B .. ':nkeys:' .. n, budget)
for _, k in ipairs(keys) do
  if holder(redis.call('HGET', B .. ':keys', k)) == n then
    redis.call('HDEL', B .. ':keys', k)
    if redis.call('LLEN', list) < max then redis.call('RPUSH', list, k)
    else redis.call('INCR', omit) end
  end
end
budget = budget - #keys
if budget > 0 then
  local sessions = redis.call('SPOP', B .. ':nsess:' .. n, budget)
  for _, s in ipairs(sessions) do redis.call('HDEL', B .. ':members:' .. s, n) end
  budget = budget - #sessions
end
if budget > 0 then
  local released = redis.call('LRANGE', list, 0, -1)
  local omitted = tonumber(redis.call('GET', omit) or '0')
  redis.call('DEL', list, omit, B .. ':info:' .. n)
  redis.call('ZREM', R, n)
  redis.call('PUBLISH', ctl,
    string.char(FRAME_VERSION, 3) .. cjson.encode({ node = n, keys = released, omitted = omitted }))
end
return redis.call('ZCARD', R)
";

/// Expired nodes one reap call takes in at most; the rest go at the next call.
pub(crate) const REAP_BATCH: usize = 64;

/// Keys and member counts one reap call releases at most.
pub(crate) const RELEASE_CHUNK: usize = 1024;

/// The refusal a node being released gets for its own writes: it is dead to the
/// cluster until released, then announces itself again.
const REAPING: &str = r"
if redis.call('ZSCORE', B .. ':reaping', NODE) then
  return redis.error_reply('REAPING this node is being released; it announces itself again after')
end
";

/// ARGV: base, key, node, new connection id, mode (`force` or `ifree`), node
/// channel base. Returns `{1, gen}` when the key is now this node's, `{0, holder,
/// holder's gen}` when `ifree` found it on another node not known dead. A previous holder elsewhere gets a
/// takeover notice on its node channel.
///
/// Known dead is being released, or past its deadline. A holder Redis has no
/// heartbeat of is live: releasing a node releases its keys, so it claimed
/// the key after Redis last forgot it (a restart, a release), and announces
/// itself at its next heartbeat.
///
/// Generations must grow across a Redis restart that lost the counter: nodes
/// re-announce keys claimed before it, and compare the generations of notices
/// and releases with those. So a generation is never below Redis's time in
/// microseconds (exact in Lua's doubles until 2255); it travels as a decimal
/// string, since cjson would write so large a number in exponent form.
const CLAIM: &str = r"
local key, node, by, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
REAPING
local function dead(n)
  if redis.call('ZSCORE', B .. ':reaping', n) then return true end
  local s = redis.call('ZSCORE', B .. ':nodes', n)
  return s and tonumber(s) < now
end
local cur = holder(redis.call('HGET', B .. ':keys', key))
if mode == 'ifree' and cur and cur ~= node and not dead(cur) then
  local v = redis.call('HGET', B .. ':keys', key)
  return { 0, cur, string.sub(v, 1, string.find(v, '|', 1, true) - 1) }
end
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local gen = math.max(tonumber(redis.call('GET', B .. ':gen') or '0') + 1, us)
gen = string.format('%d', gen)
redis.call('SET', B .. ':gen', gen)
redis.call('HSET', B .. ':keys', key, gen .. '|' .. node)
redis.call('SADD', B .. ':nkeys:' .. node, key)
if cur and cur ~= node then
  redis.call('SREM', B .. ':nkeys:' .. cur, key)
  redis.call('PUBLISH', ARGV[6] .. cur,
    string.char(FRAME_VERSION, 2) .. cjson.encode({ key = key, gen = gen, node = node, by = by }))
end
return { 1, tonumber(gen) }
";

/// ARGV: base, key, node, gen. Releases the key if that claim still holds it.
const RELEASE: &str = r"
local key, node, gen = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', B .. ':keys', key) == gen .. '|' .. node then
  redis.call('HDEL', B .. ':keys', key)
  redis.call('SREM', B .. ':nkeys:' .. node, key)
  return 1
end
return 0
";

/// ARGV: base, key, node, newest, held. For a key whose claim failed with its
/// outcome unknown: `{0}` if Redis does not name this node for it; `{2}` if it
/// does under a generation above `newest` (read before the node's check: a claim
/// run since, which a later call settles); else, with `held` empty (no claim of
/// the node holds it), releases it and returns `{1}`; with `held` a generation,
/// returns `{3, gen}`, the generation Redis names this node under.
const RELEASE_DOUBTFUL: &str = r"
local key, node = ARGV[2], ARGV[3]
local v = redis.call('HGET', B .. ':keys', key)
if not v or holder(v) ~= node then return { 0 } end
local gen = string.sub(v, 1, string.find(v, '|', 1, true) - 1)
if not tonumber(gen) then return { 0 } end
if tonumber(gen) > tonumber(ARGV[4]) then return { 2 } end
if ARGV[5] ~= '' then return { 3, gen } end
redis.call('HDEL', B .. ':keys', key)
redis.call('SREM', B .. ':nkeys:' .. node, key)
return { 1 }
";

/// ARGV: base, node, then key/generation pairs this node believes it holds.
/// Returns `key, holder` pairs for each key that claim no longer holds; the
/// holder is `''` when no node holds the key.
const HELD: &str = r"
local node, out = ARGV[2], {}
for i = 3, #ARGV, 2 do
  local v = redis.call('HGET', B .. ':keys', ARGV[i])
  if v ~= ARGV[i + 1] .. '|' .. node then
    table.insert(out, ARGV[i])
    table.insert(out, holder(v) or '')
  end
end
return out
";

/// ARGV: base, key. The live node holding the key, or false.
const LOCATE: &str = r"
local n = holder(redis.call('HGET', B .. ':keys', ARGV[2]))
if n and alive(n) then return n end
return false
";

/// ARGV: base, key, node channel base, frame, this node, deadline ms. Returns the
/// key's live node, or false; publishes the frame to that node unless it is this
/// one. Locate and send in one round trip, by the only authority on who holds the
/// key. Past the deadline (the sender already reported failure) it refuses, like
/// [`PUBLISH`].
const ROUTE: &str = r"
if now > tonumber(ARGV[6]) then
  return redis.error_reply('DEADLINE the send reached redis after its deadline')
end
local n = holder(redis.call('HGET', B .. ':keys', ARGV[2]))
if n and alive(n) then
  if n ~= ARGV[5] then redis.call('PUBLISH', ARGV[3] .. n, ARGV[4]) end
  return n
end
return false
";

/// ARGV: base, node, then token/count pairs. Records this node's member counts.
const COUNTS: &str = r"
local node = ARGV[2]
REAPING
for i = 3, #ARGV, 2 do
  local tok, c = ARGV[i], tonumber(ARGV[i + 1])
  if c > 0 then
    redis.call('HSET', B .. ':members:' .. tok, node, c)
    redis.call('SADD', B .. ':nsess:' .. node, tok)
  else
    redis.call('HDEL', B .. ':members:' .. tok, node)
    redis.call('SREM', B .. ':nsess:' .. node, tok)
  end
end
return 1
";

/// ARGV: base, token, most nodes read. Returns `{sum, omitted}`: the members of
/// the session summed over at most that many live nodes (earliest deadline first,
/// as [`NODES`] lists them), and how many live nodes it left out. It reads those
/// nodes' fields of the session's hash and nothing else, so fields any writer
/// adds to the hash cost nothing; a count that is not a whole number of members
/// a node could hold (0 to 2^40) is skipped.
const MEMBERS: &str = r"
local max = tonumber(ARGV[3])
local total = redis.call('ZCOUNT', B .. ':nodes', now, '+inf')
local live = redis.call('ZRANGEBYSCORE', B .. ':nodes', now, '+inf', 'LIMIT', 0, max)
local h = B .. ':members:' .. ARGV[2]
local sum = 0
for i = 1, #live, 256 do
  local v = redis.call('HMGET', h, unpack(live, i, math.min(i + 255, #live)))
  for _, c in ipairs(v) do
    c = c and tonumber(c)
    if c and c >= 0 and c <= 1099511627776 and c == math.floor(c) then sum = sum + c end
  end
end
return { sum, total - #live }
";

/// ARGV: base, most nodes listed, longest node id. Returns how many live nodes
/// it left out, then at most that many live nodes (earliest deadline first) with
/// their known info fields, flattened: `{omitted, node, {field, value, ...}, ...}`,
/// with the field `age`: the time since its last heartbeat, in ms on Redis's
/// clock (so nodes' clocks need not agree). Every part is bounded whatever
/// peers wrote: the count by the limit, the fields by name, each value by length,
/// and an id too long to be a node's is left out (and counted).
const NODES: &str = r"
local max, maxid = tonumber(ARGV[2]), tonumber(ARGV[3])
local total = redis.call('ZCOUNT', B .. ':nodes', now, '+inf')
local live = redis.call('ZRANGEBYSCORE', B .. ':nodes', now, '+inf', 'LIMIT', 0, max)
local fields = { 'clients', 'subscriptions', 'gaps', 'ttl', 'beat' }
local out = { 0 }
local listed = 0
for _, n in ipairs(live) do
  if #n <= maxid then
    local v = redis.call('HMGET', B .. ':info:' .. n, unpack(fields))
    local info = {}
    for i, f in ipairs(fields) do
      if v[i] then
        table.insert(info, f)
        table.insert(info, string.sub(v[i], 1, 20))
      end
    end
    local beat = v[5] and tonumber(string.sub(v[5], 1, 20))
    if beat then
      table.insert(info, 'age')
      table.insert(info, string.format('%d', math.max(0, now - beat)))
    end
    table.insert(out, n)
    table.insert(out, info)
    listed = listed + 1
  end
end
out[1] = total - listed
return out
";

/// A script with the prelude in front.
pub(crate) struct Script(String);

impl Script {
    fn new(body: &str) -> Self {
        let body = body
            .replace("REAPING", &REAPING.replace("NODE", "node"))
            .replace("REAP_BATCH", &REAP_BATCH.to_string())
            .replace("RELEASE_CHUNK", &RELEASE_CHUNK.to_string())
            .replace("FRAME_VERSION", &super::envelope::VERSION.to_string());
        Self(format!("{PRELUDE}{body}"))
    }
    pub(crate) fn text(&self) -> &str {
        &self.0
    }
}

/// Every script, with its prelude, built once per node.
pub(crate) struct Scripts {
    pub(crate) heartbeat: Script,
    pub(crate) down: Script,
    pub(crate) claim: Script,
    pub(crate) release: Script,
    pub(crate) release_doubtful: Script,
    pub(crate) held: Script,
    pub(crate) locate: Script,
    pub(crate) route: Script,
    pub(crate) counts: Script,
    pub(crate) members: Script,
    pub(crate) nodes: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            heartbeat: Script::new(HEARTBEAT),
            down: Script::new(DOWN),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            release_doubtful: Script::new(RELEASE_DOUBTFUL),
            held: Script::new(HELD),
            locate: Script::new(LOCATE),
            route: Script::new(ROUTE),
            counts: Script::new(COUNTS),
            members: Script::new(MEMBERS),
            nodes: Script::new(NODES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_redis as redis;

    /// One call's work is the invariant here, so the script runs alone, through
    /// `redis-cli`, against a server of the test's own.
    #[test]
    fn one_reap_call_releases_at_most_a_chunk() {
        const CHUNK: usize = RELEASE_CHUNK;
        let Some(redis) = redis::Redis::start("one_reap_call_releases_at_most_a_chunk") else {
            return;
        };
        let held = 3 * CHUNK + 10;
        let mut hset = vec!["HSET".to_owned(), "{t}:keys".to_owned()];
        let mut sadd = vec!["SADD".to_owned(), "{t}:nkeys:ghost".to_owned()];
        for i in 0..held {
            hset.extend([format!("k{i}"), "1|ghost".to_owned()]);
            sadd.push(format!("k{i}"));
        }
        for cmd in [hset, sadd] {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            assert_eq!(redis.cli(&args), Some(held.to_string()));
        }
        redis.cli(&["ZADD", "{t}:nodes", "1", "ghost"]).unwrap();
        let down = Scripts::new().down;
        let reap = || redis.cli(&["EVAL", down.text(), "0", "{t}", "t:ctl", "", "10"]);
        let hlen = || redis.cli(&["HLEN", "{t}:keys"]).unwrap();
        reap().unwrap();
        assert_eq!(
            hlen(),
            (held - CHUNK).to_string(),
            "one call releases one chunk"
        );
        let mut calls = 1;
        while reap().as_deref() != Some("0") {
            calls += 1;
            assert!(calls < 10, "still reaping after {calls} calls");
        }
        assert_eq!(hlen(), "0", "every key is released in the end");
        assert_eq!(
            redis.cli(&["EXISTS", "{t}:nkeys:ghost"]).as_deref(),
            Some("0")
        );
    }
}
