# The control-plane restart kubeadm documents, shared by `hapki renew` (renew.sh) and `hapki rotate`
# (rotate.sh), which set: k (kubernetes dir), pki, man (manifests), out (where manifests wait
# outside), addr (the node's address), stop_limit and limit (seconds), and die().
# snapshot() prints what every file and port holds (parsed by src/renew/snapshot.rs) and
# remembers where each port answered; restart_components() restarts the components listed in
# $restart: the API server first (its clients move to the other control planes while it is
# down), an etcd leader hands leadership off, each waited on until stopped, then back in the
# reverse order, each waited on until healthy.
# Their names, for shellcheck (this fragment alone assigns none; an unset one only becomes empty).
: "${k=}" "${pki=}" "${man=}" "${out=}" "${addr=}" "${stop_limit=}" "${limit=}" "${restart=}"
COMPONENTS='kube-apiserver etcd kube-controller-manager kube-scheduler'

# The ports a component serves on (kubeadm's defaults).
ports_of() {
    case $1 in
        kube-apiserver) echo 6443 ;;
        etcd) echo 2379 2380 ;;
        kube-controller-manager) echo 10257 ;;
        kube-scheduler) echo 10259 ;;
    esac
}

hostport() {
    case $1 in *:*) printf '[%s]:%s' "$1" "$2" ;; *) printf '%s:%s' "$1" "$2" ;; esac
}

# The certificate PEM presented at $1:$2 (etcd asks for a client certificate: its own
# healthcheck client's is shown).
presented() {
    set -- "$(hostport "$1" "$2")" "$2"
    case $2 in
        2379 | 2380) set -- "$1" -cert "$pki/etcd/healthcheck-client.crt" -key "$pki/etcd/healthcheck-client.key" ;;
        *) set -- "$1" ;;
    esac
    timeout 10 openssl s_client -connect "$@" < /dev/null 2> /dev/null |
        awk '/^-----BEGIN CERTIFICATE-----$/ { p = 1 } p { print } /^-----END CERTIFICATE-----$/ { exit }'
}

# Where port $1 answered at the last snapshot ("-": nowhere).
at() {
    eval "printf '%s' \"\${at_$1:--}\""
}

served() { # $1 port
    for sa in "$addr" 127.0.0.1; do
        pem=$(presented "$sa" "$1") || pem=
        if [ -n "$pem" ]; then
            eval "at_$1=\$sa"
            printf '=== served %s %s\n%s\n' "$1" "$sa" "$pem"
            return 0
        fi
    done
    eval "at_$1=-"
    printf '=== served %s -\n' "$1"
}

# Every certificate file kubeadm renews, the serving certificates the manifests name, and the
# client certificate of each kubeconfig kubeadm renews; then what each port presents.
snapshot() {
    printf '=== phase %s\n' "$1"
    flagged=$(awk -F= '/^ *- --(tls-cert-file|cert-file|peer-cert-file)=/ {
        n = FILENAME; sub(/.*\//, "", n); sub(/\.yaml$/, "", n); f = $1; sub(/^ *- /, "", f)
        print "=== flag " n " " f " " $2 }' "$man"/*.yaml 2> /dev/null || true)
    [ -z "$flagged" ] || printf '%s\n' "$flagged"
    set --
    for f in apiserver apiserver-kubelet-client apiserver-etcd-client front-proxy-client \
        etcd/server etcd/peer etcd/healthcheck-client; do
        [ ! -f "$pki/$f.crt" ] || set -- "$@" "$pki/$f.crt"
    done
    for f in $(printf '%s\n' "$flagged" | awk '{ print $4 }'); do
        case " $* " in *" $f "*) ;; *) [ ! -f "$f" ] || set -- "$@" "$f" ;; esac
    done
    for f in admin controller-manager scheduler kubelet; do
        [ ! -f "$k/$f.conf" ] || set -- "$@" "$k/$f.conf"
    done
    # A kubeconfig may name its client certificate's file (the kubelet's rotated
    # kubelet-client-current.pem, certificate and key in one): only its first CERTIFICATE
    # block is printed, as for every file here; no key line ever leaves the node.
    # shellcheck disable=SC2013 # awk's $2: one word each
    for f in $(awk '$1 == "client-certificate:" && $2 ~ /^\// { print $2 }' "$k"/*.conf 2> /dev/null); do
        [ ! -f "$f" ] || set -- "$@" "$f"
    done
    [ $# -eq 0 ] || awk '
        FILENAME ~ /\.conf$/ {
            if ($1 == "client-certificate-data:") print "=== kubeconfig " FILENAME " " $2
            if ($1 == "client-certificate:") print "=== kubeconfig-file " FILENAME " " $2
            next
        }
        FNR == 1 { print "=== file " FILENAME; inside = 0; done = 0 }
        /^-----BEGIN CERTIFICATE-----/ && !done { inside = 1 }
        inside { print }
        /^-----END CERTIFICATE-----/ && inside { inside = 0; done = 1 }' "$@"
    for c in $COMPONENTS; do
        for p in $(ports_of "$c"); do served "$p"; done
    done
}

step() {
    printf '=== step %s %s\n' "$(date +%s)" "$*"
}

# Whether anything accepts a connection at port $1 where it answered before.
answers() {
    a=$(at "$1")
    [ "$a" != - ] || return 1
    rc=0
    curl -sk -o /dev/null --connect-timeout 2 --max-time 3 "https://$(hostport "$a" "$1")/" || rc=$?
    [ $rc -ne 7 ] && [ $rc -ne 28 ]
}

# Waits (up to $3 seconds) until component $1's ports answer ($2 = up) or not ($2 = down).
wait_ports() {
    i=0
    for p in $(ports_of "$1"); do
        [ "$(at "$p")" != - ] || continue
        while :; do
            if answers "$p"; then [ "$2" = up ] && break; else [ "$2" = down ] && break; fi
            i=$((i + 1))
            [ $i -lt $(($3 * 2)) ] || return 1
            sleep 0.5
        done
    done
}

move_out() {
    for mc in "$@"; do
        [ ! -f "$man/$mc.yaml" ] || { mv "$man/$mc.yaml" "$out/$mc.yaml" && step "moved $mc.yaml out of $man"; }
    done
}

move_in() {
    for mc in "$@"; do
        if [ -f "$out/$mc.yaml" ] && [ ! -e "$man/$mc.yaml" ]; then
            mv "$out/$mc.yaml" "$man/$mc.yaml" && step "moved $mc.yaml back"
        fi
    done
}

restore() {
    [ ! -d "$out" ] || move_in kube-apiserver etcd kube-controller-manager kube-scheduler
}

# Whether component $1 served on any of its ports at the last snapshot.
serving() {
    for sp in $(ports_of "$1"); do
        [ "$(at "$sp")" = - ] || return 0
    done
    return 1
}

# Component $1 stopped (or said not to), its ports free.
stopped() {
    if ! serving "$1"; then
        step "$1 was not serving before: not waited on"
    elif wait_ports "$1" down "$stop_limit"; then
        step "$1 stopped"
    else
        step "$1 still answers ${stop_limit}s after its manifest was moved out: not restarted"
    fi
}

started() {
    serving "$1" || return 0
    wait_ports "$1" up "$limit" || die 11 "$1 did not answer within ${limit}s after its manifest was moved back; see the kubelet's log"
    step "$1 answers"
}

healthy() { # $1 what, then the check
    what=$1 i=0
    shift
    until "$@" > /dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt $((limit * 2)) ] || return 1
        sleep 0.5
    done
    step "$what healthy"
}

apiserver_ok() {
    [ "$(curl -fsS --max-time 3 --cacert "$pki/ca.crt" "https://$(hostport "$(at 6443)" 6443)/healthz")" = ok ]
}

# Those of $@ that restart (in $restart).
only() {
    for c in "$@"; do
        case " $restart " in *" $c "*) printf '%s\n' "$c" ;; esac
    done
}

# A leader that stops fails the proposals in flight ("leader changed": the other API servers
# answer 500 for a moment). When this member leads, leadership goes to another member first
# (etcdctl move-leader, as etcd's runtime guide advises). Best effort: without etcdctl, or when
# the move fails, the election after the stop still keeps quorum.
hand_off_leader() { # $1 the member's client address
    command -v etcdctl > /dev/null 2>&1 || return 0
    set -- --endpoints="https://$1:2379" --cacert="$pki/etcd/ca.crt" \
        --cert="$pki/etcd/healthcheck-client.crt" --key="$pki/etcd/healthcheck-client.key" \
        --command-timeout=5s
    me=$(ETCDCTL_API=3 etcdctl "$@" endpoint status 2> /dev/null | awk -F', ' '$5 == "true" { print $2 }')
    [ -n "$me" ] || return 0
    to=$(ETCDCTL_API=3 etcdctl "$@" member list 2> /dev/null |
        awk -F', ' -v me="$me" '$1 != me && $2 == "started" && $6 == "false" { print $1; exit }')
    [ -n "$to" ] || return 0
    if ETCDCTL_API=3 etcdctl "$@" move-leader "$to" > /dev/null 2>&1; then
        step "etcd leadership moved to member $to before the restart"
    fi
}

# Restarts the components in $restart; $@ (optional) is run while their manifests are out.
restart_components() {
    for c in $(only kube-apiserver); do move_out "$c" && stopped "$c"; done
    [ -z "$(only etcd)" ] || [ "$(at 2379)" = - ] || hand_off_leader "$(at 2379)"
    others=$(only etcd kube-controller-manager kube-scheduler)
    for c in $others; do move_out "$c"; done
    for c in $others; do stopped "$c"; done
    [ $# -eq 0 ] || "$@"
    if [ -n "$(only etcd)" ]; then
        move_in etcd
        started etcd
        [ "$(at 2379)" = - ] || healthy "etcd member" etcd_health "$(at 2379)" "$pki" ||
            die 13 "the etcd member did not become healthy within ${limit}s of its restart"
    fi
    for c in $(only kube-controller-manager kube-scheduler); do move_in "$c" && started "$c"; done
    if [ -n "$(only kube-apiserver)" ]; then
        move_in kube-apiserver
        started kube-apiserver
        [ "$(at 6443)" = - ] || healthy "kube-apiserver" apiserver_ok ||
            die 12 "kube-apiserver did not report healthy within ${limit}s of its restart"
    fi
}
# Manifests an interrupted run left outside go back first (never over a newer one); from now
# on they go back whatever ends the script. Call holding the node's lock.
take_out_dir() {
    [ -d "$out" ] || mkdir -m 0700 "$out"
    if [ -L "$out" ] || [ ! -d "$out" ]; then die 77 "$out is not a directory of hapki's"; fi
    for c in $COMPONENTS; do
        [ ! -f "$out/$c.yaml" ] || step "found $c.yaml left out by an interrupted run"
    done
    restore
    trap restore EXIT
    trap 'exit 129' HUP INT TERM PIPE
}
