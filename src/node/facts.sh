# hapki node facts: read-only. Prints one record per line; never prints private key material
# (key files are reported by stat and sha256 only; kubeconfigs only by their CA data).
# $1 = kubernetes dir (/etc/kubernetes), $2 = hapki state dir (/var/lib/hapki)
# $3 = optional host name to resolve on the node (the control-plane endpoint)
# $4 = scope: "pki" (push, audit) or "join" (preflight: also ports, etcd data, CNI, versions,
#      public-key hashes); the narrow scope keeps push and audit fast and their output small
set -u
k=$1
st=$2
resolve=${3:-}
scope=${4:-join}
# $5… = artifact destinations to describe (with their SHA-256), for incremental pushes.
if [ $# -ge 4 ]; then shift 4; else shift $#; fi
pki=$k/pki
printf 'V 1\n'
printf 'T %s\n' "$(date +%s)"
printf 'H %s\n' "$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)"
printf 'U %s\n' "$(id -u)"
printf 'UN %s\n' "${LOGNAME:-${USER:-}}"
statline D "$k"
statline D "$pki"
statline D "$pki/etcd"
shared_state "$pki"
# Every certificate (public) with its content, every other file by stat only.
for f in "$pki"/* "$pki"/etcd/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    [ -d "$f" ] && [ ! -L "$f" ] && continue
    statline X "$f"
    case $f in
    *.crt) [ -f "$f" ] && [ ! -L "$f" ] && printf 'B %s\n' "$(head -c 65536 "$f" | base64 -w0)" ;;
    esac
done
for c in admin.conf super-admin.conf controller-manager.conf scheduler.conf kubelet.conf bootstrap-kubelet.conf; do
    statline Q "$k/$c"
    if [ -f "$k/$c" ] && [ ! -L "$k/$c" ]; then
        # Only the CA data: kubeconfigs also hold client keys, which never leave the node.
        d=$(grep -m1 'certificate-authority-data:' "$k/$c" 2>/dev/null | sed 's/.*certificate-authority-data:[[:space:]]*//; s/[[:space:]"]//g')
        printf 'A %s %s\n' "$c" "${d:--}"
    fi
done
[ -f "$st/last-serial" ] && printf 'L %s\n' "$(head -c 32 "$st/last-serial" | tr -cd '0-9')"
[ -f "$st/last-bundle.json" ] && printf 'R %s\n' "$(head -c 65536 "$st/last-bundle.json" | base64 -w0)"
[ -d "$st/lock" ] && printf 'W %s\n' "$(head -c 200 "$st/lock/owner" 2>/dev/null | tr -d '\n')"
for g in "$k"/.hapki-stage.*; do
    [ -d "$g" ] && printf 'G %s\n' "$g"
done
if [ "$scope" = join ]; then
    for m in kube-apiserver kube-controller-manager kube-scheduler etcd; do
        statline M "$k/manifests/$m.yaml"
    done
    if [ -d /var/lib/etcd ]; then
        # Names only, shown to the operator (the first few): ls is enough, nothing is parsed.
        # shellcheck disable=SC2012
        printf 'E %s\n' "$(ls -A /var/lib/etcd 2>/dev/null | head -n 5 | tr '\n' ' ')"
    else
        printf 'E\n'
    fi
    if [ -d /etc/cni/net.d ]; then
        # shellcheck disable=SC2012
        printf 'C %s\n' "$(ls -A /etc/cni/net.d 2>/dev/null | head -n 20 | tr '\n' ' ')"
    else
        printf 'C\n'
    fi
    for t in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$t" ] && printf 'P %s\n' "$(base64 -w0 < "$t")"
    done
    printf 'KA %s\n' "$(kubeadm version -o short 2>/dev/null | head -n1 || true)"
    printf 'KL %s\n' "$(kubelet --version 2>/dev/null | head -n1 || true)"
    # Public halves of the shared keys, so pairs can be checked without a key leaving the node.
    if command -v openssl > /dev/null 2>&1; then
        for n in ca.key sa.key front-proxy-ca.key etcd/ca.key; do
            if [ ! -f "$pki/$n" ] || [ -L "$pki/$n" ]; then continue; fi
            h=$(openssl pkey -in "$pki/$n" -pubout -outform DER 2>/dev/null | sha256sum) || continue
            printf 'PK %s %s\n' "$n" "${h%% *}"
        done
        if [ -f "$pki/sa.pub" ] && [ ! -L "$pki/sa.pub" ]; then
            h=$(openssl pkey -pubin -in "$pki/sa.pub" -outform DER 2>/dev/null | sha256sum) && printf 'PK sa.pub %s\n' "${h%% *}"
        fi
    fi
    if [ -n "$resolve" ]; then
        printf 'N %s\n' "$(getent ahosts "$resolve" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ')"
    fi
fi
# A destination written @/path is an image archive: its index.json (IX) is described too, and
# once, what containerd's k8s.io namespace holds (CI, base64 of `ctr images ls`; "-" when ctr
# or its daemon is not there), so push and audit can see each image's digest and pin.
imgs=
for d in "$@"; do
    ix=
    case $d in @/*) d=${d#@} ix=1 imgs=1 ;; esac
    if [ -f "$d" ] && [ ! -L "$d" ]; then
        h=$(hashf "$d" 2>/dev/null) || h=unreadable
        printf 'AF file %s %s %s\n' "$(stat -c '%a %u %g %s' "$d")" "$h" "$d"
        [ -n "$ix" ] && printf 'IX %s %s\n' "$d" "$(tar -xOf "$d" --occurrence=1 index.json 2>/dev/null | head -c 65536 | base64 -w0)"
    else
        statline AF "$d"
    fi
done
if [ -n "$imgs" ]; then
    if command -v ctr >/dev/null 2>&1 && ci=$(ctr -n k8s.io images ls 2>/dev/null 9>&-); then
        printf 'CI %s\n' "$(printf '%s\n' "$ci" | head -c 1048576 | base64 -w0)"
    else
        printf 'CI -\n'
    fi
fi
printf 'Z\n'
