# hapki renew, on one control plane: kubeadm renews the leaf certificates, the control-plane
# components are restarted the way kubeadm documents it (each static-pod manifest moved out of
# the kubelet's directory, the component waited on until it is gone, the manifest moved back),
# and what every local server presents over TLS is read before and after.
# $1 kubernetes dir  $2 state dir  $3 probe (read-only) | renew  $4 the node's address (the
# servers are probed there, then at 127.0.0.1)  $5 how long a component may take to stop,
# seconds  $6 how long it may take to come back and be healthy, seconds  $7 this run's id
# $8... what `kubeadm certs renew` renews: `all` or kubeadm's names.
# stdout: sections, each opened by a line "=== KIND ARGS" (parsed by src/renew/snapshot.rs);
# kubeadm's own output goes to stderr. Exit: 0 done (the served certificates are judged by
# hapki), 10 kubeadm failed, 11 a component did not come back, 12 the API server not healthy,
# 13 the etcd member not healthy, 75 locked, 77 unsafe path.
set -eu
umask 077
TZ=UTC0
export TZ
k=$1 st=$2 op=$3 addr=$4 stop_limit=$5 limit=$6 stamp=$7
shift 7
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    exit "$1"
}
case $op in probe | renew) ;; *) die 1 "bad operation" ;; esac
case $limit$stop_limit in '' | *[!0-9]*) die 1 "bad timeout" ;; esac
case $stamp$addr in *[!A-Za-z0-9._:-]*) die 1 "bad arguments" ;; esac
for n in "$@"; do
    case $n in '' | *[!a-z0-9-]*) die 1 "bad certificate name" ;; esac
done
pki=$k/pki man=$k/manifests out=$k/hapki-manifests-out
if [ "$op" = probe ]; then
    snapshot before
    exit 0
fi

for p in "$k" "$man" "$pki" "$st" "$out"; do
    [ ! -L "$p" ] || die 77 "$p is a symlink: refusing to work through it"
done
[ -d "$man" ] || die 1 "$man does not exist: this is not a kubeadm control plane"
[ -d "$st" ] || mkdir -m 0700 "$st"
command -v flock > /dev/null 2>&1 || die 1 "this node lacks flock(1) (util-linux), which hapki's lock needs"
command -v kubeadm > /dev/null 2>&1 || die 1 "kubeadm is not on this node's PATH"
exec 9>> "$st/push.lock"
flock -n 9 || die 75 "another hapki run holds the lock on this node ($st/push.lock); wait for it to end and try again"
take_out_dir
snapshot before
if [ "$1" = all ]; then
    kubeadm certs renew all >&2 || die 10 "kubeadm certs renew all failed"
else
    for n in "$@"; do
        kubeadm certs renew "$n" >&2 || die 10 "kubeadm certs renew $n failed"
    done
fi
step "kubeadm certs renew $*"

# Only the components that read what was renewed restart (admin.conf: none).
restart=
for n in "$@"; do
    case $n in
        all) restart=$COMPONENTS ;;
        apiserver | apiserver-kubelet-client | apiserver-etcd-client | front-proxy-client) restart="$restart kube-apiserver" ;;
        etcd-server | etcd-peer | etcd-healthcheck-client) restart="$restart etcd" ;;
        controller-manager.conf) restart="$restart kube-controller-manager" ;;
        scheduler.conf) restart="$restart kube-scheduler" ;;
    esac
done
restart_components
rmdir "$out" 2> /dev/null || true
# shellcheck disable=SC2086 # the list, one word each
printf '%s renew certs=%s restarted=%s\n' "$stamp" "$(printf '%s' "$*" | tr ' ' ,)" \
    "$(only $COMPONENTS | tr '\n' , | sed 's/,$//')" >> "$st/history"
snapshot after
