# hapki join: is the new member's etcd healthy? $1 address, $2 pki dir. Exit 2: cannot check.
set -u
addr=$1 pki=$2
case $addr in *:*) url="https://[$addr]:2379" ;; *) url="https://$addr:2379" ;; esac
if command -v etcdctl > /dev/null 2>&1; then
    ETCDCTL_API=3 etcdctl --endpoints="$url" --cacert="$pki/etcd/ca.crt" \
        --cert="$pki/etcd/healthcheck-client.crt" --key="$pki/etcd/healthcheck-client.key" \
        --command-timeout=3s endpoint health
elif command -v curl > /dev/null 2>&1; then
    curl -fsS --max-time 3 --cacert "$pki/etcd/ca.crt" --cert "$pki/etcd/healthcheck-client.crt" \
        --key "$pki/etcd/healthcheck-client.key" "$url/health" | grep -q '"health": *"true"'
else
    echo "neither etcdctl nor curl on the node: cannot check etcd health" >&2
    exit 2
fi
