"""The Redis function library: the atomic, fenced steps the Redis dispenser runs on the server.

A Redis FUNCTION (not a ``SCRIPT LOAD``-ed script) because ``FUNCTION LOAD`` is replicated to
the replicas and persisted in the AOF, so a promoted replica already has it; the dispenser
still reloads it on "function not found" (an emptied or brand-new server).

A lease lives in one hash per namespace, ``keygen:lease:<namespace>``:

    base      first ID of the lease, as a decimal string: never touched by Lua arithmetic,
              because Lua numbers are doubles and IDs reach 2**63-1
    length    IDs in the lease (bounded well below 2**53, so exact as a Lua number)
    used      IDs of the lease handed out so far
    run_id    the run_id of the master that installed the lease
    replid    the master_replid of the master that installed the lease
    grant     the ledger grant the lease came from ("namespace:start"), for compare-and-set
    installed_at  unix time of the install, to adapt the next lease's length to the rate

The fence: each step reads the executing server's own ``run_id`` and ``master_replid`` with
``INFO`` inside the same atomic function call and refuses unless they equal the lease's tags.
A restart changes run_id; a promotion (also a demote-then-repromote) changes master_replid. So
a lease is only ever served by the very incarnation that installed it, which is the only
writer of its ``used`` field: replication lag, lost AOF tails and split brains cannot make
two servers serve the same lease.

The refill lock (``keygen:refill-lock:<namespace>``, a string ``<run_id>:<replid>|<token>``)
is fenced the same way. It only saves work, but a lock left behind is costly: every instance
waits for it before refilling, and until then the namespace is served by a slower layer. A
lock whose holder's release went to a master that is gone (a failover came between) was
copied to the promoted replica, and a restarted master reloads it from its AOF; taken on
another incarnation, it is void here and ``LOCK`` takes it over.
"""

from __future__ import annotations

from typing import Final

LIBRARY_NAME: Final = "keygen"
#: Bumped whenever the code below changes, so a running server gets the new version.
LIBRARY_VERSION: Final = 2

ALLOCATE: Final = f"keygen_allocate_v{LIBRARY_VERSION}"
INSTALL: Final = f"keygen_install_v{LIBRARY_VERSION}"
PEEK: Final = f"keygen_peek_v{LIBRARY_VERSION}"
LOCK: Final = f"keygen_lock_v{LIBRARY_VERSION}"
UNLOCK: Final = f"keygen_unlock_v{LIBRARY_VERSION}"

LIBRARY: Final = f"""#!lua name={LIBRARY_NAME}

-- The executing server's identity, read inside the calling function's atomic step.
local function incarnation()
    local server = redis.call('INFO', 'server')
    local replication = redis.call('INFO', 'replication')
    local run_id = string.match(server, 'run_id:(%x+)')
    local replid = string.match(replication, 'master_replid:(%x+)')
    local role = string.match(replication, 'role:(%a+)')
    return run_id, replid, role
end

-- KEYS[1] lease hash; ARGV[1] size (1 <= size <= 2**53)
-- returns {{"OK", base, used_after}}: the range is base+used_after-size .. base+used_after-1
--         {{"EMPTY"}} no lease; {{"FENCED", grant}} the lease belongs to another incarnation;
--         {{"EXHAUSTED", grant, left}} fewer than size IDs left in the lease
redis.register_function('{ALLOCATE}', function(keys, args)
    local lease = redis.call('HMGET', keys[1], 'base', 'length', 'used', 'run_id', 'replid',
                             'grant')
    if not lease[1] then
        return {{'EMPTY'}}
    end
    local run_id, replid, role = incarnation()
    if role ~= 'master' or run_id ~= lease[4] or replid ~= lease[5] then
        return {{'FENCED', lease[6]}}
    end
    local size = tonumber(args[1])
    local left = tonumber(lease[2]) - tonumber(lease[3])
    if size > left then
        return {{'EXHAUSTED', lease[6], left}}
    end
    return {{'OK', lease[1], redis.call('HINCRBY', keys[1], 'used', size)}}
end)

-- KEYS[1] lease hash
-- returns {{grant or "", length, left, installed_at, fenced (0|1)}}; grant "" when there is none
redis.register_function{{
    function_name = '{PEEK}',
    flags = {{'no-writes'}},
    callback = function(keys, args)
        local lease = redis.call('HMGET', keys[1], 'grant', 'length', 'used', 'installed_at',
                                 'run_id', 'replid')
        if not lease[1] then
            return {{'', 0, 0, '0', 1}}
        end
        local run_id, replid, role = incarnation()
        local fenced = 0
        if role ~= 'master' or run_id ~= lease[5] or replid ~= lease[6] then
            fenced = 1
        end
        return {{lease[1], tonumber(lease[2]), tonumber(lease[2]) - tonumber(lease[3]),
                lease[4], fenced}}
    end,
}}

-- KEYS[1] lease hash; ARGV[1] grant expected to be installed now ("" for none);
-- ARGV[2] new grant id; ARGV[3] base; ARGV[4] length; ARGV[5] installed_at
-- returns {{"INSTALLED"}}, or {{"CONFLICT"}} when another lease was installed meanwhile.
-- A lease of another incarnation may always be replaced: it can never be served here again.
redis.register_function('{INSTALL}', function(keys, args)
    local current = redis.call('HMGET', keys[1], 'grant', 'run_id', 'replid')
    local run_id, replid, role = incarnation()
    local ours = current[2] == run_id and current[3] == replid
    if ours and (current[1] or '') ~= args[1] then
        return {{'CONFLICT'}}
    end
    redis.call('HSET', keys[1], 'base', args[3], 'length', args[4], 'used', 0,
               'run_id', run_id, 'replid', replid, 'grant', args[2], 'installed_at', args[5])
    return {{'INSTALLED'}}
end)

-- KEYS[1] lock key; ARGV[1] token; ARGV[2] time to live in milliseconds
-- returns 1 when taken, 0 when another holder has it on this very incarnation.
redis.register_function('{LOCK}', function(keys, args)
    local run_id, replid = incarnation()
    local here = run_id .. ':' .. replid .. '|'
    local held = redis.call('GET', keys[1])
    if held and string.sub(held, 1, #here) == here then
        return 0
    end
    redis.call('SET', keys[1], here .. args[1], 'PX', args[2])
    return 1
end)

-- KEYS[1] lock key; ARGV[1] token
-- returns 1 when released, 0 when the lock is not held with this token (expired, taken over).
-- Whatever incarnation took it: a release that reaches a promoted replica frees its copy.
redis.register_function('{UNLOCK}', function(keys, args)
    local held = redis.call('GET', keys[1])
    local mine = '|' .. args[1]
    if held and string.sub(held, -#mine) == mine then
        redis.call('DEL', keys[1])
        return 1
    end
    return 0
end)
"""
