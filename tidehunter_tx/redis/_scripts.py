"""The Lua scripts, and calling them by SHA with a fallback on ``NOSCRIPT``.

Every batch carries (producer id, sequence number); the admit-and-push script
remembers the last few it applied per producer, so a batch re-sent after a
lost connection is applied exactly once, whatever happened to the first try.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import txredisapi
from twisted.python.failure import Failure

from ._connection import encode_command

__all__ = [
    "ADMIT_AND_PUSH",
    "GAP",
    "HISTORY",
    "LOST",
    "RETRYABLE",
    "START",
    "STOP",
    "Script",
    "is_noscript",
    "retryable_refusal",
]

#: Applied (seq, admitted) pairs remembered per producer for re-sent batches.
HISTORY = 32
#: A reply's fifth field: 0 applied, 1 a replay, GAP an earlier batch missing,
#: LOST the counter hash is gone (nothing applied: a vanished hash is never a
#: stop); its sixth is 1 when this batch reached the shared limit.
GAP = 2
LOST = 3

#: Refusals that pass on their own (memory freed, a failover over, a load or
#: a slow script done): the batch is kept and sent again.
RETRYABLE = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


def retryable_refusal(failure: Failure) -> str | None:
    """The refusal in one line when it can pass, else None.

    A script wraps the error of the command it called (``ERR Error running
    script ... : OOM command not allowed ...``), so every word is looked at.
    """
    if not failure.check(txredisapi.ResponseError):
        return None
    message = " ".join(failure.getErrorMessage().split())
    words = {word.strip("-:,.()") for word in message.split()}
    return message if words.intersection(RETRYABLE) else None


@dataclass(frozen=True)
class Script:
    """A Lua script, sent once in full and then called by its SHA1."""

    source: bytes

    @property
    def sha(self) -> bytes:
        return hashlib.sha1(self.source).hexdigest().encode()

    def encode(self, keys: list[bytes], *args: list[bytes], load: bool) -> bytes:
        """``EVALSHA`` (or, to load it, ``EVAL``) as RESP bytes."""
        name, body = (b"EVAL", self.source) if load else (b"EVALSHA", self.sha)
        return encode_command(name, [body, b"%d" % len(keys)], keys, *args)


def is_noscript(failure: Failure) -> bool:
    """Redis does not know the script (restarted, or ``SCRIPT FLUSH``)."""
    error = failure.check(txredisapi.ResponseError) and failure.value
    return bool(error) and str(error).startswith("NOSCRIPT")


# KEYS: counter hash ('' when the count is kept in the hunter), target, history,
# the hash the feed's position is kept in ('' none).
# ARGV: producer, seq, mode (list | stream | none), maxlen, the position's
# field ('' none), the position after the batch, P, then P positions (after
# each record: Redis decides how many are admitted) or none (P = 0), then the
# records, or (mode none: the records stay in the hunter) just their number.
ADMIT_AND_PUSH = Script(
    b"""
local counter, target, seen, positions = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local producer, seq, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- A negative seq: apply even after a gap (Redis forgot the history).
local force = seq < 0
if force then seq = -seq end
local maxlen = tonumber(ARGV[4])
local field, position, npos = ARGV[5], ARGV[6], tonumber(ARGV[7])
local first = 8 + npos
local state, count, limit, reached, present = '1', 0, 0, 0, true
if counter ~= '' then
  local fields = redis.call('HMGET', counter, 'state', 'count', 'limit')
  present = fields[1] ~= false
  state = fields[1] or '0'
  count = tonumber(fields[2] or '0')
  limit = tonumber(fields[3] or '0')
end
local history = redis.call('HGET', seen, producer) or '0|'
local last, past = string.match(history, '^(%d+)|(.*)$')
if seq <= tonumber(last) then
  local replay = 0
  for s, a in string.gmatch(past, '(%d+):(%d+),') do
    if tonumber(s) == seq then replay = tonumber(a) end
  end
  return {replay, state, count, limit, 1, 0}
end
-- The hash is written by every start: gone now, it vanished (Redis restarted
-- empty, FLUSHDB, eviction, DEL).  Nothing is applied, and it is no stop.
if counter ~= '' and not present then return {0, '', 0, 0, 3, 0} end
-- Applied strictly in order: a batch whose predecessor is not applied yet
-- (re-sent after NOSCRIPT while another client loaded the script) waits.
if seq > tonumber(last) + 1 and not force then
  return {0, state, count, limit, 2, 0}
end
local n = #ARGV - first + 1
if mode == 'none' then n = tonumber(ARGV[first]) end
local admitted = 0
if state == '1' then
  admitted = n
  if limit > 0 then admitted = math.max(0, math.min(n, limit - count)) end
  if admitted > 0 then
    if mode == 'list' then
      redis.call('RPUSH', target, unpack(ARGV, first, first + admitted - 1))
    elseif mode == 'stream' then
      for i = first, first + admitted - 1 do
        if maxlen > 0 then
          redis.call('XADD', target, 'MAXLEN', '~', maxlen, '*', 'data', ARGV[i])
        else
          redis.call('XADD', target, '*', 'data', ARGV[i])
        end
      end
    end
    if counter ~= '' then
      count = redis.call('HINCRBY', counter, 'count', admitted)
      -- The shared limit reached ends the shared run as techies' stop()
      -- does (count into total, state 0), so a consumer's
      -- `while sc.started:` ends and a later run starts afresh.
      if limit > 0 and count >= limit then
        redis.call('HINCRBY', counter, 'total', count)
        redis.call('HSET', counter, 'count', 0, 'state', 0)
        state, reached = '0', 1
      end
    end
  end
  -- Where the feed stands, stored with the push it belongs to, so a
  -- restarted hunter resumes exactly after the last record delivered: after
  -- the batch, or (the limit cut it) after the last record admitted.
  if positions ~= '' and field ~= '' and admitted > 0 then
    local at = position
    if admitted < n then
      at = ''
      if npos == n then at = ARGV[7 + admitted] end
    end
    if at ~= '' then redis.call('HSET', positions, field, at) end
  end
end
past = past .. seq .. ':' .. admitted .. ','
local keep = 0
for _ in string.gmatch(past, ',') do keep = keep + 1 end
while keep > HISTORY do
  past = string.gsub(past, '^[^,]*,', '', 1)
  keep = keep - 1
end
redis.call('HSET', seen, producer, seq .. '|' .. past)
redis.call('EXPIRE', seen, 86400)
-- `count` is the run's count as this batch left it, before a reset.
return {admitted, state, count, limit, 0, reached}
""".replace(b"HISTORY", b"%d" % HISTORY)
)

# techies semantics: a start or a stop moves count into total.  Joining a run
# that is already on leaves it alone, so hunters sharing a counter do not reset
# each other's count.
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '1' then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  redis.call('HINCRBY', KEYS[1], 'total', count)
  redis.call('HSET', KEYS[1], 'count', 0, 'state', 1)
end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'limit', ARGV[1]) end
return redis.call('HMGET', KEYS[1], 'state', 'count', 'total', 'limit', ARGV[2])
"""

STOP = """
if redis.call('HGET', KEYS[1], 'state') == '1' then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
  redis.call('HINCRBY', KEYS[1], 'total', count)
  redis.call('HSET', KEYS[1], 'count', 0)
end
redis.call('HSET', KEYS[1], 'state', 0)
return redis.call('HMGET', KEYS[1], 'state', 'count', 'total', 'limit')
"""
