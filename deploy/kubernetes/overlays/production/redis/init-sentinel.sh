#!/bin/sh
# Each start of a Sentinel: monitor the master the other Sentinels name (keygen-redis-0 when
# none answers: a new cluster). The Sentinels' own state is not kept across restarts: they
# learn the replicas and each other again within seconds.
set -eu
master=$(redis-cli -h keygen-sentinel -p 26379 sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1 || true)
[ -n "$master" ] || master=keygen-redis-0.keygen-redis
cat > /data/sentinel.conf <<CONF
port 26379
protected-mode no
daemonize no
dir "/data"
logfile ""
loglevel notice
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $POD_NAME.keygen-sentinel
sentinel monitor mymaster $master 6379 2
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
CONF
