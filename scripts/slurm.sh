#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1 (munged + slurmctld + slurmd), to try scripts/slurm_sweep.sbatch
# and to test it; not a production setup.
#
#   scripts/slurm.sh start DIR [PORT]   # prints the slurm.conf path: export SLURM_CONF=<it>, then sbatch/squeue
#   scripts/slurm.sh stop DIR
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge packages and root (slurmd runs jobs as their user).
# Everything (munge key and socket, state, spool, logs) lives in DIR; nothing under /etc is touched.
set -euo pipefail
cmd=${1:?usage: $0 start|stop DIR [PORT]}
dir=$(mkdir -p "${2:?usage: $0 start|stop DIR [PORT]}" && cd "$2" && pwd)
port=${3:-56817}
conf=$dir/slurm.conf

stop() {
  for pid in "$dir"/run/slurmd.pid "$dir"/run/slurmctld.pid "$dir"/run/munged.pid; do
    [[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null || true
  done
}

case $cmd in
  start)
    for b in munged slurmctld slurmd sbatch; do
      command -v "$b" >/dev/null || { echo "slurm.sh: $b missing: apt-get install -y slurmctld slurmd slurm-client munge" >&2; exit 3; }
    done
    [[ $(id -u) == 0 ]] || { echo "slurm.sh: slurmd must run as root" >&2; exit 3; }
    mkdir -p "$dir"/{run,state,spool}
    chmod 755 "$dir" "$dir/run"
    if [[ ! -f $dir/munge.key ]]; then
      dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 2>/dev/null
      chmod 400 "$dir/munge.key"
    fi
    munged --force --socket="$dir/run/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/munged.log" \
      --pid-file="$dir/run/munged.pid" --seed-file="$dir/munged.seed"
    node=$(hostname -s)
    cat >"$conf" <<CONF
ClusterName=ftrun
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do  # the node registers with the controller
      SLURM_CONF=$conf sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "$conf"; exit 0; }
      sleep 0.5
    done
    echo "slurm.sh: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    stop; exit 1
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
