# hapki node facts: read-only. Prints one record per line; never prints private key material
# (key files are reported by stat and sha256 only; kubeconfigs only by their CA data).
# $1 = kubernetes dir (/etc/kubernetes), $2 = hapki state dir (/var/lib/hapki)
# $3 = optional host name to resolve on the node (the control-plane endpoint)
# $4 = scope: "pki" (push, audit) or "join" (preflight: also ports, etcd data, CNI, versions,
#      public-key hashes); the narrow scope keeps push and audit fast and their output small
# shellcheck disable=SC2154 # nl, sl and the EX_ codes: set by common.sh, which always runs first
set -u
k=$1
st=$2
resolve=${3:-}
scope=${4:-join}
# $5… = artifact destinations to describe (with their SHA-256), for incremental pushes.
if [ $# -ge 4 ]; then shift 4; else shift $#; fi
pki=$k/pki
# The destinations as describe lines (AF), the image archives among them listed on their own.
afl='' imgs=''
for d in "$@"; do
    case $d in @/*) d=${d#@} imgs="$imgs$d$nl" ;; esac
    afl="${afl}AF $d$nl"
done
printf 'V 1\n'
printf 'T %s\n' "$(date +%s)"
# The host name and the login's uid from /proc, read by the shell itself (no process).
hn=
{ IFS= read -r hn < /proc/sys/kernel/hostname; } 2> /dev/null || hn=$(hostname)
printf 'H %s\n' "$hn"
uid=
{ while read -r fk fv _; do [ "$fk" = Uid: ] && uid=$fv && break; done < /proc/self/status; } 2> /dev/null
[ -n "$uid" ] || uid=$(id -u)
printf 'U %s\n' "$uid"
printf 'UN %s\n' "${LOGNAME:-${USER:-}}"
# Every path is described in one list (describe: one stat and one sha256sum for all of them):
# the directories, the shared files, every other entry of the pki directories (X), the
# kubeconfigs (Q) and, for a join, the static-pod manifests (M).
shared_list "$pki"
dl="D $k${nl}D $pki${nl}D $pki/etcd$nl$sl"
for f in "$pki"/* "$pki"/etcd/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    [ -d "$f" ] && [ ! -L "$f" ] && continue
    dl="${dl}X $f$nl"
done
kcs=
for c in admin.conf super-admin.conf controller-manager.conf scheduler.conf kubelet.conf bootstrap-kubelet.conf; do
    dl="${dl}Q $k/$c$nl"
    [ -f "$k/$c" ] && [ ! -L "$k/$c" ] && [ -r "$k/$c" ] && kcs="$kcs$k/$c$nl"
done
if [ "$scope" = join ]; then
    for m in kube-apiserver kube-controller-manager kube-scheduler etcd; do
        dl="${dl}M $k/manifests/$m.yaml$nl"
    done
fi
facts=$(describe "$dl")
printf '%s\n' "$facts"
# Every certificate (public) with its content: the regular, readable .crt files of at most
# 64 KiB among the X records, in their order, concatenated in one base64 line (the operator
# cuts it by the described sizes and keeps each piece whose SHA-256 is the described one).
set --
while IFS=' ' read -r t kd _ _ _ sz hs p; do
    { [ "$t" = X ] && [ "$kd" = file ]; } || continue
    case $p in *.crt) ;; *) continue ;; esac
    case $hs$sz in *[!0-9a-f]* | '') continue ;; esac
    [ "$sz" -le 65536 ] 2> /dev/null && set -- "$@" "$p"
done << CERTS
$facts
CERTS
[ $# -gt 0 ] && printf 'BA %s\n' "$(cat -- "$@" | base64 -w0)"
# Only the CA data of the kubeconfigs (they also hold client keys, which never leave the node):
# the first certificate-authority-data value of each, one awk for all of them.
set --
while IFS= read -r f; do
    [ -n "$f" ] && set -- "$@" "$f"
done << KCS
$kcs
KCS
[ $# -gt 0 ] && awk 'FNR == 1 { f[++n] = FILENAME }
    !(FILENAME in d) && index($0, "certificate-authority-data:") {
        v = $0; sub(/.*certificate-authority-data:[[:space:]]*/, "", v); gsub(/[[:space:]"]/, "", v); d[FILENAME] = v
    }
    END { for (i = 1; i <= n; i++) { v = d[f[i]]; nm = f[i]; sub(/.*\//, "", nm); print "A", nm, (v == "" ? "-" : v) } }' "$@" 2> /dev/null
if [ -f "$st/last-serial" ]; then
    ls=
    { IFS= read -r ls < "$st/last-serial"; } 2> /dev/null
    case $ls in *[!0-9]*) ls= ;; esac
    printf 'L %s\n' "$ls"
fi
[ -d "$st/lock" ] && printf 'W %s\n' "$(head -c 200 "$st/lock/owner" 2>/dev/null | tr -d '\n')"
for g in "$k"/.hapki-stage.*; do
    [ -d "$g" ] && printf 'G %s\n' "$g"
done
if [ "$scope" = join ]; then
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
[ -n "$afl" ] && describe "$afl" fast
while IFS= read -r d; do
    [ -n "$d" ] && [ -f "$d" ] && [ ! -L "$d" ] &&
        printf 'IX %s %s\n' "$d" "$(tar -xOf "$d" --occurrence=1 index.json 2>/dev/null | head -c 65536 | base64 -w0)"
done << IMGS
$imgs
IMGS
if [ -n "$imgs" ]; then
    if command -v ctr >/dev/null 2>&1 && ci=$(ctr -n k8s.io images ls 2>/dev/null 9>&-); then
        printf 'CI %s\n' "$(printf '%s\n' "$ci" | head -c 1048576 | base64 -w0)"
    else
        printf 'CI -\n'
    fi
fi
printf 'Z\n'
