#!/bin/sh
# First start of a data node: copy redis.conf into the volume (the server owns it after that:
# Sentinel rewrites it as roles change) and make the node a replica of the current master:
# the one the Sentinels name, or keygen-redis-0 when no Sentinel answers yet (a new cluster).
set -eu
self="$POD_NAME.keygen-redis"
[ -f /data/redis.conf ] && exit 0
cp /etc/keygen/redis.conf /data/redis.conf.new
master=$(redis-cli -h keygen-sentinel -p 26379 sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1 || true)
if [ -z "$master" ] && [ "$POD_NAME" != keygen-redis-0 ]; then
    master=keygen-redis-0.keygen-redis
fi
if [ -n "$master" ] && [ "$master" != "$self" ]; then
    echo "replicaof $master 6379" >> /data/redis.conf.new
fi
mv /data/redis.conf.new /data/redis.conf
