#!/bin/sh
# cli_slurm.sh - ldmgen --prompts under a real single-node Slurm cluster (Debian's
# slurmctld, slurmd, slurm-client and munge, started here with a private config): a
# 4-task job array of ldmgen --prompts on the default bundle and a merge job that
# depends on it (afterok).  Checked: one ok row per line in the merged database, every
# image byte-identical to the same line made without sharding, history --check and
# integrity_check.  A second submission in which one task fails: the failure is seen,
# the merge job is cancelled, the failed task names its file and line.  Then that task
# is requeued with the line fixed: it skips what it had done and finishes the rest.
#
# Needs root (munged runs as the munge user, the Slurm daemons as root); skipped with a
# message otherwise.  Every daemon started here is stopped by its pid at the end.
. tests/lib.sh
PATH="$PATH:/usr/sbin:/sbin"
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: cli_slurm.sh starts munged, slurmctld and slurmd, which needs root (CI runs make test as root)"
    finish
    exit 0
fi
missing=""
for p in munged munge slurmctld slurmd sbatch squeue scontrol sinfo scancel setpriv sqlite3; do
    command -v "$p" > /dev/null 2>&1 || missing="$missing $p"
done
id munge > /dev/null 2>&1 || missing="$missing (user munge)"
if [ -n "$missing" ]; then
    bad "not installed:$missing (scripts/install-deps.sh installs slurmctld, slurmd, slurm-client, munge)"
    finish
    exit 1
fi
unset SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_MAX SLURM_ARRAY_TASK_STEP \
      SLURM_ARRAY_TASK_COUNT SLURM_JOB_ID JOB_COMPLETION_INDEX LDM_SHARD_COUNT
export OMP_NUM_THREADS=1

ROOT=$PWD
ABS_GEN="$ROOT/$GEN"; case "$GEN" in /*) ABS_GEN="$GEN";; esac
ABS_B="$ROOT/bundle/default.ldmb"
# the cluster's folder must be reachable by the munge user (the test's TMP is 0700)
S=$(mktemp -d /tmp/ldmslurm.XXXXXX)
chmod 755 "$S"
MUNGE_PID=""; CTLD_PID=""; SLURMD_PID=""; JOBS=""
stop_daemons() {
    [ -n "$JOBS" ] && [ -n "$CTLD_PID" ] && scancel $JOBS > /dev/null 2>&1
    for p in $SLURMD_PID $CTLD_PID $MUNGE_PID; do kill "$p" 2> /dev/null; done
    for p in $SLURMD_PID $CTLD_PID $MUNGE_PID; do
        i=0; while kill -0 "$p" 2> /dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$p" 2> /dev/null
    done
    SLURMD_PID=""; CTLD_PID=""; MUNGE_PID=""
}
cleanup() { stop_daemons; rm -rf "$S" "$TMP"; }
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- ten prompts, and the reference: the whole file in one process, no shards ----
cat > "$S/p.txt" <<'EOF'
# ten emoji
red apple
smiling cat face
thumbs up
red heart
grinning face
green apple
face with tears of joy
fire
star
rocket
EOF
mkdir -p "$S/ref" "$S/out" "$S/db" "$S/merged"
"$ABS_GEN" --bundle "$ABS_B" --prompts "$S/p.txt" --seed 100 -n 3 -o "$S/ref/{index:02}-{seed}.png" \
    --no-history -q; rc=$?
check "reference run (no shards): exit 0" test $rc -eq 0

# ---- munge: as the munge user, socket folder 0755, key 0400 ----
M="$S/munge"
mkdir -p "$M"
dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$M"
chmod 0755 "$M"
chmod 0400 "$M/munge.key"
setpriv --reuid=munge --regid=munge --init-groups munged -F --socket="$M/munge.socket" \
    --key-file="$M/munge.key" --pid-file="$M/munged.pid" --seed-file="$M/munged.seed" \
    --log-file="$M/munged.log" > "$M/stdout" 2>&1 &
MUNGE_PID=$!
i=0; while [ ! -S "$M/munge.socket" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
munge -n -S "$M/munge.socket" 2> /dev/null | unmunge -S "$M/munge.socket" > "$S/unmunge" 2>&1
check "munged answers ($(tail -n 2 "$M/stdout" "$M/munged.log" 2> /dev/null | tr '\n' ' '))" grep -q 'STATUS: *Success' "$S/unmunge"

# ---- slurmctld -c and slurmd, a private config, on free ports ----
H=$(hostname -s 2> /dev/null || hostname)
export SLURM_CONF="$S/slurm.conf"
mkdir -p "$S/state" "$S/spool"
up=0
for attempt in 1 2 3; do
    P1=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000)); P2=$((P1 + 1))
    cat > "$SLURM_CONF" <<EOF
ClusterName=ldmtest
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=$P1
SlurmdPort=$P2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$M/munge.socket
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$S/jobcomp.txt
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=600
InactiveLimit=0
NodeName=$H NodeAddr=127.0.0.1 CPUs=4 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -D -c -f "$SLURM_CONF" > "$S/slurmctld.out" 2>&1 &
    CTLD_PID=$!
    slurmd -D -f "$SLURM_CONF" > "$S/slurmd.out" 2>&1 &
    SLURMD_PID=$!
    i=0
    while [ $i -lt 150 ]; do
        if sinfo -h -o %T 2> /dev/null | grep -q '^idle'; then up=1; break; fi
        kill -0 "$CTLD_PID" 2> /dev/null && kill -0 "$SLURMD_PID" 2> /dev/null || break
        sleep 0.2; i=$((i + 1))
    done
    [ $up -eq 1 ] && break
    for p in $SLURMD_PID $CTLD_PID; do kill "$p" 2> /dev/null; wait "$p" 2> /dev/null; done
    CTLD_PID=""; SLURMD_PID=""
done
check "the cluster is up (node idle; $(tail -n 3 "$S/slurmctld.log" 2> /dev/null | tr '\n' ' '))" test $up -eq 1
if [ $up -ne 1 ]; then finish; exit 1; fi

# wait_jobs IDS: until squeue lists none of them (at most ~5 minutes)
wait_jobs() {
    i=0
    while [ $i -lt 1500 ]; do
        [ -z "$(squeue -h -j "$1" 2> /dev/null)" ] && return 0
        sleep 0.2; i=$((i + 1))
    done
    return 1
}
# state JOB [TASK]: JobState of a job or of one array task (sbatch --wait would say 0
# for a cancelled job)
state() {
    if [ -n "$2" ]; then
        scontrol -o show job "$1" | grep -E "ArrayTaskId=$2( |$)" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'
    else
        scontrol -o show job "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1
    fi
}

# ---- the job script: one shard per array task, the shard from Slurm's variables ----
cat > "$S/shard.sh" <<EOF
#!/bin/sh
export OMP_NUM_THREADS=1
exec "$ABS_GEN" --bundle "$ABS_B" --prompts "\$1" --seed 100 -n 3 -o "\$2/{index:02}-{seed}.png" \\
    --db "\$3/shard-{shard}.db"
EOF
chmod +x "$S/shard.sh"

# the first submission as README.md and ldmgen(1) write it: the script on stdin, the
# merge with --kill-on-invalid-dep (also the cluster's default here)
cd "$S"
A=$(sbatch --parsable --job-name=ldm-sweep --array=0-3 --cpus-per-task=1 --requeue \
        --output="$S/task-%a.out" <<EOF
#!/bin/sh
export OMP_NUM_THREADS=\$SLURM_CPUS_PER_TASK
exec "$ABS_GEN" --bundle "$ABS_B" --prompts p.txt --seed 100 -n 3 \\
     -o 'out/{index:02}-{seed}.png' --db 'db/shard-{shard}.db'
EOF
)
MJ=$(sbatch --parsable --dependency=afterok:$A --kill-on-invalid-dep=yes --job-name=ldm-merge \
       --output="$S/merge.out" --wrap "\"$ABS_GEN\" history merge merged/all.db db/shard-*.db")
cd "$ROOT"
JOBS="$A $MJ"
check "submitted the array ($A) and the merge job ($MJ)" test -n "$A" -a -n "$MJ"
wait_jobs "$A,$MJ"
check "array and merge finished within 5 minutes" test $? -eq 0
for k in 0 1 2 3; do
    st=$(state "$A" $k)
    check "task $k: COMPLETED (got $st; $(tail -n 2 "$S/task-$k.out" | tr '\n' ' '))" test "$st" = COMPLETED
    check "task $k: ldmgen took shard $k/4 from Slurm" grep -q "^ldmgen: shard $k/4 (from a Slurm job array: SLURM_ARRAY_TASK_ID=$k," "$S/task-$k.out"
done
st=$(state "$MJ")
check "merge job: COMPLETED (got $st; $(cat "$S/merge.out" 2> /dev/null | tr '\n' ' '))" test "$st" = COMPLETED
DB="$S/merged/all.db"
check "merged: exactly one ok row per line (10 lines)" test "$(sqlite3 "$DB" "SELECT count(*) || ' ' || count(DISTINCT prompt_line) FROM generations WHERE status = 'ok'")" = "10 10"
check "merged: no other rows" test "$(sqlite3 "$DB" "SELECT count(*) FROM generations")" -eq 10
check "merged: from four shards" test "$(sqlite3 "$DB" "SELECT count(DISTINCT pid) FROM generations")" -eq 4
same=0
for f in "$S"/ref/*.png; do cmp -s "$f" "$S/out/$(basename "$f")" && same=$((same + 1)); done
check "every image byte-identical to the unsharded run ($same of 10)" test $same -eq 10
"$ABS_GEN" history --db "$DB" --check > "$S/check" 2>&1
check "merged: history --check ($(cat "$S/check"))" grep -q '^ok' "$S/check"
check "merged: PRAGMA integrity_check" test "$(sqlite3 "$DB" "PRAGMA integrity_check")" = ok

# ---- one task fails: detected, the merge job cancelled ----
mkdir -p "$S/out2" "$S/db2"
cat > "$S/p2.jsonl" <<'EOF'
{"prompt": "red apple"}
{"prompt": "smiling cat face", "steps": 2}
{"prompt": "thumbs up"}
{"prompt": "red heart"}
{"prompt": "grinning face"}
{"prompt": "fire", "guidance": 1}
{"prompt": "star", "steps": }
{"prompt": "rocket"}
EOF
A2=$(sbatch --parsable --array=0-3 -J ldm-shards2 -o "$S/task2-%a.out" "$S/shard.sh" "$S/p2.jsonl" "$S/out2" "$S/db2")
MJ2=$(sbatch --parsable --dependency=afterok:$A2 -J ldm-merge2 -o "$S/merge2.out" \
      --wrap "\"$ABS_GEN\" history merge \"$S/merged/two.db\" \"$S\"/db2/shard-*.db")
JOBS="$JOBS $A2 $MJ2"
wait_jobs "$A2,$MJ2"
check "second submission finished" test $? -eq 0
st=$(state "$A2" 2)
check "task 2 (the malformed line): FAILED (got $st)" test "$st" = FAILED
check "task 2: names the file and line" grep -q 'p2.jsonl:7: not valid JSON' "$S/task2-2.out"
check "task 2: its other line done" grep -q '1 done, 0 skipped, 1 failed of 2 prompts' "$S/task2-2.out"
for k in 0 1 3; do
    st=$(state "$A2" $k)
    check "second submission, task $k: COMPLETED (got $st)" test "$st" = COMPLETED
done
st=$(state "$MJ2")
check "the merge job is cancelled, not left waiting (got $st)" test "$st" = CANCELLED
check "no merged database" test ! -e "$S/merged/two.db"

# ---- the line fixed, task 2 requeued: done lines skipped, the rest made ----
sed -i 's/"steps": }/"steps": 3}/' "$S/p2.jsonl"
scontrol requeue "${A2}_2" > "$S/requeue" 2>&1
check "requeue task 2 ($(cat "$S/requeue"))" test $? -eq 0
# a requeued job waits for its old credential to expire (cred_expire, 2 minutes): start it now
scontrol update JobId="${A2}_2" StartTime=now > /dev/null 2>&1
i=0; while [ $i -lt 100 ] && [ "$(state "$A2" 2)" = FAILED ]; do sleep 0.1; i=$((i + 1)); done
wait_jobs "$A2"
st=$(state "$A2" 2)
check "requeued task 2: COMPLETED (got $st; $(tail -n 2 "$S/task2-2.out" | tr '\n' ' '))" test "$st" = COMPLETED
check "requeued task 2: skipped its done line, made the fixed one" grep -q '1 done, 1 skipped, 0 failed of 2 prompts' "$S/task2-2.out"
"$ABS_GEN" history merge -q "$S/merged/two.db" "$S"/db2/shard-*.db > /dev/null 2>&1
check "after the requeue: one ok row per line (8)" test "$(sqlite3 "$S/merged/two.db" "SELECT count(*) || ' ' || count(DISTINCT prompt_line) FROM generations WHERE status = 'ok'")" = "8 8"

pids="$MUNGE_PID $CTLD_PID $SLURMD_PID"
stop_daemons
alive=""; for p in $pids; do kill -0 "$p" 2> /dev/null && alive="$alive $p"; done
check "every daemon stopped ($pids; alive:$alive)" test -z "$alive"
finish
