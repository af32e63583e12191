#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for a shared Optuna study and MLflow's backend store.
#
#   scripts/postgres.sh start DATA_DIR [PORT]   # initdb (first time) + pg_ctl start; prints the database URLs
#   scripts/postgres.sh stop DATA_DIR
#
# Uses Debian's postgresql package (apt-get install postgresql). PostgreSQL refuses to run as root, so under
# root the server runs as the unprivileged user $PG_USER (default: postgres, which the package creates).
# Loopback only, trust authentication: for tests and a single trusted machine. A cluster needs a real server
# (password or certificate authentication, listen_addresses set to the hosts' network).
# Creates the databases "optuna" (the studies) and "mlflow" (the tracking server's backend store).
set -euo pipefail

cmd=${1:?usage: $0 start|stop DATA_DIR [PORT]}
data=${2:?usage: $0 start|stop DATA_DIR [PORT]}
port=${3:-5432}
role=ftrun

bindir=${PG_BIN:-}
if [[ -z $bindir ]]; then
  if command -v pg_ctl >/dev/null; then bindir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
  else bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1); fi
fi
if [[ -z $bindir || ! -x $bindir/pg_ctl ]]; then
  echo "postgres.sh: no PostgreSQL binaries (pg_ctl); install them: apt-get install -y postgresql" >&2
  exit 3
fi

as_owner() {  # run a server binary as the data directory's unprivileged owner
  if [[ $(id -u) == 0 ]]; then runuser -u "${PG_USER:-postgres}" -- "$@"; else "$@"; fi
}

case $cmd in
  start)
    mkdir -p "$data"
    if [[ $(id -u) == 0 ]]; then chown "${PG_USER:-postgres}" "$data"; chmod 700 "$data"; fi
    if [[ ! -f $data/PG_VERSION ]]; then
      as_owner "$bindir/initdb" -D "$data" -U "$role" --auth=trust --encoding=UTF8 --no-locale >"$data.initdb.log" 2>&1 \
        || { cat "$data.initdb.log" >&2; exit 1; }
    fi
    # TCP on loopback only; the socket lives in the data directory (no /var/run/postgresql needed)
    as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1 || as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200 -c fsync=off" start >/dev/null \
      || { tail -n 20 "$data/server.log" >&2; exit 1; }
    for db in optuna mlflow; do
      "$bindir/psql" -h 127.0.0.1 -p "$port" -U "$role" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
        | grep -q 1 || "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$role" "$db"
    done
    echo "postgresql://$role@127.0.0.1:$port/optuna"
    echo "postgresql://$role@127.0.0.1:$port/mlflow"
    ;;
  stop)
    as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop DATA_DIR [PORT]" >&2; exit 2 ;;
esac
