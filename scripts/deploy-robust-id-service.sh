#!/usr/bin/env bash
# The original product description's quick start, step 1: start the local topology -- a Redis master and 2 replicas
# (AOF on), 3 Sentinels (mymaster, quorum 2) and the PostgreSQL ledger, all on 127.0.0.1 --
# wait until it is ready, and print how to run Keygen on it. Installs Keygen into .venv
# first if needed, and Redis/PostgreSQL with apt-get if they are missing.
#
# Arguments go to `keygen cluster up`: --dir DIR, --base-port N, --down-after-ms MS,
# --no-postgres. The environment is also written to .keygen/cluster.env.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/keygen ]; then
    echo "installing Keygen into .venv (scripts/install)" >&2
    scripts/install
fi

dir=.keygen/cluster
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --dir) dir="${args[i + 1]:-$dir}" ;;
        --dir=*) dir="${args[i]#--dir=}" ;;
    esac
done

exports=$(.venv/bin/keygen cluster up "$@")
mkdir -p .keygen
printf '%s\n' "$exports" > .keygen/cluster.env

cat <<NEXT

$exports

Next steps:
  source .keygen/cluster.env                 # the environment above, in this shell
  .venv/bin/keygen serve                     # the service on http://127.0.0.1:8010
  curl -X POST http://127.0.0.1:8010/allocate -H 'Content-Type: application/json' -d '{"size": 1000}'
  .venv/bin/keygen cluster status --dir $dir   # processes, roles, current master
  .venv/bin/keygen cluster down --dir $dir     # stop it (data kept; add --purge to delete it)
See docs/deployment.md for ports, troubleshooting, failover and backups.
NEXT
