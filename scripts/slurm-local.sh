#!/usr/bin/env bash
# slurm-local.sh {start|stop|status|restart} - a single-node SLURM cluster on localhost, for `aotbench sweep
# --launcher slurm` and the SLURM tests (pytest -m slurm).
#
#   start    install the packages if missing (Debian/Ubuntu apt; about 30 s the first time), write the configs, start
#            munged, MariaDB + slurmdbd (accounting, so that `sacct` works), slurmctld and slurmd; wait until the node
#            is idle. Idempotent: a daemon that is already up is left running (slurmctld re-reads its config).
#   stop     cancel leftover jobs, stop the daemons by their pid files (no pkill: nothing this script did not start).
#   status   one line per daemon, then `sinfo`; exit 0 when the cluster takes jobs, 1 otherwise.
#
# Needs root (it installs packages, writes /etc/slurm, and runs the daemons as root; no systemd, no cgroups).
# Settings (environment):
#   WITH_ACCOUNTING=0     skip MariaDB/slurmdbd. Not recommended: without sacct a job that dies with no result
#                         (scancel, node failure) stays UNKNOWN to submitit and a sweep waits for it forever.
#   SLURM_CLUSTER=local   cluster name;  SLURM_PARTITION=debug  partition name.
#   SLURM_LOG=/var/log/slurm  where the daemons log.
#   SLURM_REQUEUE_DELAY=10  seconds a requeued job waits before it may start again (AuthInfo=cred_expire; SLURM's
#                         default is 120, which makes every preemption test wait two minutes).
#
# Pitfalls this script handles (each one met on a real machine):
#   - no service starts on install (no systemd; policy-rc.d): every daemon is started directly and writes a pid file;
#   - cgroups: proctrack/linuxproc, task/none, jobacct_gather/none;
#   - the node line comes verbatim from `slurmd -C`; the hostname must resolve (an /etc/hosts line is added if not);
#   - a requeued job waits AuthInfo=cred_expire seconds (default 120) and the main scheduler runs every 60 s by
#     default: both are shortened so that a preempted job restarts within seconds;
#   - a job whose dependency failed stays PENDING forever unless DependencyParameters=kill_invalid_depend;
#   - slurmdbd.conf holds a password and must be mode 0600;
#   - stopped daemons may linger as zombies (PID 1 does not reap them): a zombie counts as not running.
set -euo pipefail

WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
CLUSTER=${SLURM_CLUSTER:-local}
PARTITION=${SLURM_PARTITION:-debug}
LOG=${SLURM_LOG:-/var/log/slurm}
REQUEUE_DELAY=${SLURM_REQUEUE_DELAY:-10}
NODE=$(hostname -s)
RUN=/run
MYSQL_PID=$RUN/mysqld/mysqld.pid
MUNGE_PID=$RUN/munge/munged.pid
export DEBIAN_FRONTEND=noninteractive

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

# alive <pidfile> <name>: the process exists, is not a zombie, and has the expected name (a recycled pid is not ours)
alive() {
  local f=$1 name=$2 p
  [ -s "$f" ] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$p" ] && [ -r "/proc/$p/status" ] || return 1
  grep -q "^State:.*zombie" "/proc/$p/status" && return 1
  grep -q "^Name:[[:space:]]*$name" "/proc/$p/status"
}

wait_for() { # wait_for <seconds> <cmd...>
  local t=$1; shift
  for _ in $(seq 1 $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  say "timed out waiting for: $*"
  tail -n 20 "$LOG"/*.log /var/log/munge/munged.log 2>/dev/null >&2 || true
  return 1
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts the SLURM daemons)"; }

install_packages() {
  local pkgs="munge slurmctld slurmd slurm-client" missing p
  [ "$WITH_ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null || die "packages missing ($missing) and no apt-get: install them by hand"
  say "installing $(echo $missing)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_configs() {
  getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG"
  local nodeline acct
  nodeline=$(slurmd -C | head -n1)  # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  cat > /etc/slurm/slurm.conf.new <<EOF
# written by aotbench scripts/slurm-local.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$REQUEUE_DELAY
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DependencyParameters=kill_invalid_depend
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
$acct
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
$nodeline NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  CONF_CHANGED=0
  cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf 2>/dev/null || CONF_CHANGED=1
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
}

start_munge() {
  if alive "$MUNGE_PID" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /var/lib/munge /var/log/munge "$RUN/munge"
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge "$RUN/munge"
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 "$RUN/munge"
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$MUNGE_PID"
  wait_for 20 sh -c 'munge -n | unmunge'
}

start_accounting() {
  [ "$WITH_ACCOUNTING" = 1 ] || return 0
  if ! alive "$MYSQL_PID" "mariadbd\|mysqld" || ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p "$RUN/mysqld"; chown mysql:mysql "$RUN/mysqld"
    nohup "$(command -v mariadbd || command -v mysqld)" --user=mysql --bind-address=127.0.0.1 \
      --pid-file="$MYSQL_PID" >"$LOG/mariadb.log" 2>&1 &
    wait_for 60 mysqladmin ping
  fi
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  umask 077
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmlocal
StorageLoc=slurm_acct_db
EOF
  umask 022
  chmod 600 /etc/slurm/slurmdbd.conf  # holds a password; slurmdbd refuses a readable one
  alive "$RUN/slurmdbd.pid" slurmdbd || slurmdbd
  wait_for 60 sacctmgr -n show cluster
}

node_ready() { sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }

cmd_start() {
  need_root
  install_packages
  write_configs
  start_munge
  start_accounting
  if [ "$CONF_CHANGED" = 1 ]; then  # some settings (AuthInfo, node lines) need a restart, not a reconfigure
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
  fi
  alive "$RUN/slurmctld.pid" slurmctld || slurmctld
  alive "$RUN/slurmd.pid" slurmd || slurmd -N "$NODE"
  wait_for 60 node_ready
  # a node left DOWN/DRAINED by an earlier unclean stop takes no jobs: resume it
  if sinfo -h -o %T | grep -Eq 'down|drain'; then scontrol update NodeName="$NODE" State=RESUME || true; fi
  wait_for 30 node_ready
  sinfo
}

stop_pid() { # stop_pid <pidfile> <name>
  alive "$1" "$2" || return 0
  local p; p=$(cat "$1")
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 1 40); do alive "$1" "$2" || return 0; sleep 0.25; done
  kill -9 "$p" 2>/dev/null || true
}

cmd_stop() {
  need_root
  if command -v squeue >/dev/null && alive "$RUN/slurmctld.pid" slurmctld; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true  # leftover jobs
  fi
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$MYSQL_PID" "mariadbd\|mysqld"
  stop_pid "$MUNGE_PID" munged
  say "stopped"
}

cmd_status() {
  local ok=0 d
  for d in "munged:$MUNGE_PID" "slurmctld:$RUN/slurmctld.pid" "slurmd:$RUN/slurmd.pid"; do
    if alive "${d#*:}" "${d%%:*}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"
    else echo "${d%%:*}: not running"; ok=1; fi
  done
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    for d in "mariadbd\|mysqld:$MYSQL_PID" "slurmdbd:$RUN/slurmdbd.pid"; do
      local name=${d%%:*}; name=${name%%\\*}
      if alive "${d#*:}" "${d%%:*}"; then echo "$name: running (pid $(cat "${d#*:}"))"
      else echo "$name: not running"; ok=1; fi
    done
  fi
  if [ $ok = 0 ] && node_ready; then sinfo; return 0; fi
  echo "the cluster is not taking jobs; start it with: bash scripts/slurm-local.sh start"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  *) echo "usage: $0 {start|stop|status|restart}" >&2; exit 2 ;;
esac
