#!/bin/bash
# A throw-away single-node SLURM cluster for CI and for trying the profile by hand.
# Debian 12 (slurm 22.05) as root, no systemd, no cgroups, no slurmdbd; one fake GPU (File=/dev/null).
#
#   SLURM_BASE=/tmp/slurm-ci slurm/ci-cluster.sh up     # install if needed, write config, start daemons
#   SLURM_BASE=/tmp/slurm-ci slurm/ci-cluster.sh down   # stop our daemons by PID, restore /etc/slurm
#   SLURM_BASE=/tmp/slurm-ci slurm/ci-cluster.sh status
#
# State, logs and PID files live under $SLURM_BASE. The config must be /etc/slurm/slurm.conf: the
# Snakemake jobstep plugin drops SLURM_CONF before its nested srun. Existing /etc/slurm/slurm.conf and
# gres.conf are backed up to $SLURM_BASE/backup and put back by `down`. A munged that is already
# running is reused and left alone. There is no accounting DB, so Snakemake profiles must use
# `slurm-status-command: squeue` (MinJobAge=600 keeps finished jobs visible to squeue).
set -euo pipefail

BASE=${SLURM_BASE:-/tmp/distalign-slurm-ci}
CMD=${1:-}
NODE=$(hostname -s)

log() { echo "ci-cluster: $*" >&2; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() {  # stop_pid NAME PID: SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 pid=$2 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do alive "$pid" || { log "stopped $name ($pid)"; return 0; }; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  log "killed $name ($pid)"
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  command -v apt-get >/dev/null || { log "slurm is not installed and apt-get is missing"; exit 3; }
  export DEBIAN_FRONTEND=noninteractive
  local pkgs="slurmctld slurmd slurm-client munge"
  if ! apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
}

up() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 3; }
  if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    log "slurmctld/slurmd already running on this machine; refusing to start a second cluster"; exit 4
  fi
  local t0 cpus mem
  t0=$(date +%s.%N)
  install_packages
  cpus=$(nproc)
  mem=$(awk '/MemTotal/{print int($2/1024*0.8)}' /proc/meminfo)  # advertise 80% of RAM
  mkdir -p "$BASE"/{state,spool,log,run,backup} /etc/slurm
  for f in slurm.conf gres.conf; do
    if [ -e "/etc/slurm/$f" ] && [ ! -e "$BASE/backup/$f" ]; then cp -p "/etc/slurm/$f" "$BASE/backup/$f"; fi
    [ -e "/etc/slurm/$f" ] || touch "$BASE/backup/$f.absent"
  done
  cat > /etc/slurm/slurm.conf <<EOF
# written by distalign slurm/ci-cluster.sh (state in $BASE); restored by 'ci-cluster.sh down'
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmd drops GPUs without a device file: a fake one on /dev/null.
  echo "NodeName=${NODE} Name=gpu File=/dev/null Count=1" > /etc/slurm/gres.conf

  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  if alive "$(cat /run/munge/munged.pid 2>/dev/null)"; then
    log "reusing the running munged"
  else
    runuser -u munge -- /usr/sbin/munged
    cat /run/munge/munged.pid > "$BASE/run/munged.pid"  # ours: `down` stops it (munged deletes its file on exit)
  fi
  slurmctld
  slurmd -N "$NODE"
  local i
  for i in $(seq 1 120); do
    sinfo -h -o '%T' 2>/dev/null | grep -qx idle && break
    sleep 0.25
  done
  if ! sinfo -h -o '%T' | grep -qx idle; then
    log "node did not become idle"; sinfo || true; tail -n 20 "$BASE"/log/*.log || true; exit 1
  fi
  log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s (state $BASE)"
}

down() {
  local name pid i
  # Cancel every job first (a test that timed out leaves its jobs running): stopping slurmd alone leaves
  # the job's processes (srun, the job's snakemake and its script) behind.
  if alive "$(cat "$BASE/run/slurmctld.pid" 2>/dev/null)"; then
    scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
    for i in $(seq 1 30); do
      [ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for name in slurmd slurmctld munged; do
    pid=$(cat "$BASE/run/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] && stop_pid "$name" "$pid"
    rm -f "$BASE/run/$name.pid"
  done
  # Job step daemons that outlived slurmd (only this cluster's: `up` refuses to start beside another one).
  pkill -KILL -x slurmstepd 2>/dev/null || true
  for f in slurm.conf gres.conf; do
    if [ -e "$BASE/backup/$f" ]; then
      mv -f "$BASE/backup/$f" "/etc/slurm/$f"
    elif [ -e "$BASE/backup/$f.absent" ]; then
      rm -f "/etc/slurm/$f" "$BASE/backup/$f.absent"
    fi
  done
}

status() {
  local name pid
  for name in munged slurmctld slurmd; do
    pid=$(cat "$BASE/run/$name.pid" 2>/dev/null || true)
    if alive "$pid"; then echo "$name $pid running"; else echo "$name not running (ours)"; fi
  done
  sinfo 2>/dev/null || true
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: SLURM_BASE=DIR $0 up|down|status" >&2; exit 2 ;;
esac
