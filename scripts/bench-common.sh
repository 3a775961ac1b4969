# Shared by scripts/bench-push and scripts/bench-audit (sourced): medians, and one measured run
# with the operator's and the nodes' CPU. The caller sets WORK (a scratch directory) and
# SSHD_PIDS (every node's listening sshd).
# shellcheck shell=bash

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# CPU seconds the nodes have used so far: every node's listening sshd with all it has reaped
# (its sessions, and theirs: the shells and every program they ran), from /proc.
node_cpu() {
    local p t=0
    for p in "${SSHD_PIDS[@]}"; do
        t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat")))
    done
    echo "$t / $(getconf CLK_TCK)" | bc -l
}

# measure NAME CMD...: runs CMD once (it must succeed); appends "wall op_cpu node_cpu rss_kib"
# to $WORK/NAME. op_cpu: user+system of CMD and every process it waited for (GNU time).
measure() {
    local name=$1 n0 n1 t
    shift
    n0=$(node_cpu)
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$@" >/dev/null ||
        { echo "bench: $name failed (exit $?)" >&2; exit 1; }
    sleep 0.3 # the nodes' sshd reap their sessions
    n1=$(node_cpu)
    t=$(tail -n 1 "$WORK/time")
    # shellcheck disable=SC2086 # four numbers
    set -- $t
    echo "$1 $(echo "$2 + $3" | bc -l) $(echo "$n1 - $n0" | bc -l) $4" >> "$WORK/$name"
}

# col NAME N: the median of column N of $WORK/NAME.
col() { awk -v c="$2" '{print $c}' "$WORK/$1" | median; }

# row NODES METHOD NAME BASE [EXTRA]: one table line (ratio against $WORK/BASE's wall time).
row() {
    local n=$1 w r rss=-
    w=$(col "$3" 1)
    r=$(echo "$w / $(col "$4" 1)" | bc -l)
    [ "$3" != "$4" ] && rss="$(($(col "$3" 4) / 1024)) MiB"
    printf '%-6s %-16s %8.3fs %6.2fx %11.1fms %12.1fms %9s %11s\n' "$n" "$2" "$w" "$r" \
        "$(echo "$(col "$3" 2) * 1000 / $n" | bc -l)" "$(echo "$(col "$3" 3) * 1000 / $n" | bc -l)" \
        "$rss" "${5:--}"
}
header() {
    printf '%-6s %-16s %9s %7s %12s %13s %9s %11s\n' nodes method wall ratio "op CPU/node" \
        "node CPU/node" "peak RSS" "${1:-}"
}

# tb_up N: a testbed of N control planes in $DIR (each run its own), on the first free net from
# $NET up (another testbed may hold one), each node with its own /root.
tb_up() {
    local rc
    while :; do
        rc=0
        scripts/testbed up --control-planes "$1" --dir "$DIR" --net "$NET" --own-root >/dev/null 2>&1 || rc=$?
        [ "$rc" = 75 ] || break
        NET=$((NET + 1))
    done
    [ "$rc" = 0 ] || { echo "bench: scripts/testbed up failed (exit $rc)" >&2; exit 1; }
}

# kex_split SSH_WORDS... -- ADDR: what one login of the system ssh costs, with the key exchange
# its configuration picks and with curve25519-sha256 alone (for the split only: hapki never
# narrows the user's KexAlgorithms): client CPU and node CPU per login, 10 logins each. Prints
# one line.
kex_split() {
    local ssh=() a out="" k n0 n1 i
    while [ "$1" != -- ]; do ssh+=("$1"); shift; done
    a=$2
    for k in default curve25519-sha256; do
        local o=()
        [ "$k" = default ] || o=(-o "KexAlgorithms=$k")
        n0=$(node_cpu)
        /usr/bin/time -f '%U %S' -o "$WORK/kex" bash -c \
            'for i in 1 2 3 4 5 6 7 8 9 10; do "$@" true || exit 1; done' - "${ssh[@]}" "${o[@]}" "root@$a"
        sleep 0.3
        n1=$(node_cpu)
        i=$(tail -n 1 "$WORK/kex")
        out="$out $k: client $(echo "(${i% *} + ${i#* }) * 100" | bc -l | xargs printf '%.0f') ms, node $(echo "($n1 - $n0) * 100" | bc -l | xargs printf '%.0f') ms;"
    done
    echo "one login (ssh NODE true), per login:$out"
}
