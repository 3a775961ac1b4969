# hapki pki renew-ca --from/--inventory, on one node: install same-key re-issues of the CA
# certificates (public; on stdin) over the ones the node holds, and the kubeconfigs under the
# kubernetes dir whose certificate-authority-data was the old ca.crt; on the first master,
# also the kube-public/cluster-info ConfigMap (through admin.conf; after cluster_info.sh).
# $1 kubernetes dir  $2 state dir  $3 first | worker  $4 this run's id
# stdin: for each certificate "=== NAME" (ca.crt, front-proxy-ca.crt or etcd/ca.crt) then its
# PEM. Nothing is written unless EVERY incoming certificate has the installed one's subject and
# public key (checked here with openssl) and a later notAfter; a node that lacks a file skips
# it (a worker holds only ca.crt).
# stdout: "R NAME BACKUP" per certificate replaced, "U NAME" unchanged, "K FILE" per
# kubeconfig updated, "C updated|unchanged|-" for cluster-info.
# Exit: 0 done, 3 not a same-key re-issue (nothing written), 75 locked, 77 unsafe path,
# 78 certificates installed but cluster-info could not be updated.
set -eu
umask 077
k=$1 st=$2 role=$3 stamp=$4
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    exit "$1"
}
case $role in first | worker) ;; *) die 1 "bad role" ;; esac
case $stamp in '' | *[!A-Za-z0-9._-]*) die 1 "bad arguments" ;; esac
pki=$k/pki
for p in "$k" "$pki" "$pki/etcd" "$st"; do
    [ ! -L "$p" ] || die 77 "$p is a symlink: refusing to write through it"
done
[ -d "$st" ] || mkdir -m 0700 "$st"
command -v openssl > /dev/null 2>&1 || die 1 "this node lacks openssl, which checks the re-issued certificates"
command -v flock > /dev/null 2>&1 || die 1 "this node lacks flock(1) (util-linux), which hapki's lock needs"
exec 9>> "$st/push.lock"
flock -n 9 || die 75 "another hapki run holds the lock on this node ($st/push.lock); wait for it to end and try again"
in=$(mktemp -d "$k/.hapki-renew-ca.XXXXXX")
trap 'rm -rf "$in"' EXIT
# Only the three CA names; each PEM into its own file.
awk -v d="$in" '
    /^=== / { f = ""; if ($2 == "ca.crt" || $2 == "front-proxy-ca.crt" || $2 == "etcd/ca.crt") { f = $2; gsub(/\//, "_", f); f = d "/" f }; next }
    f != "" { print > f }' || die 1 "could not read the certificates"

enddate() { # $1 file: notAfter as seconds since the epoch
    d=$(openssl x509 -noout -enddate -in "$1") || return 1
    date -u -d "${d#notAfter=}" +%s
}

# Every check first: nothing is written unless all pass.
names=
for f in "$in"/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    [ "$n" = etcd_ca.crt ] && n=etcd/ca.crt
    old=$pki/$n
    [ ! -L "$old" ] || die 77 "$old is a symlink: refusing to write through it"
    [ -f "$old" ] || continue
    if cmp -s "$old" "$f"; then
        printf 'U %s\n' "$n"
        continue
    fi
    if [ "$(openssl x509 -noout -pubkey -in "$old")" != "$(openssl x509 -noout -pubkey -in "$f")" ] ||
        [ "$(openssl x509 -noout -subject -in "$old")" != "$(openssl x509 -noout -subject -in "$f")" ]; then
        die 3 "the new $n is not a same-key re-issue of the installed one (another subject or key): nothing written; a different CA needs hapki push --replace"
    fi
    [ "$(enddate "$f")" -gt "$(enddate "$old")" ] ||
        die 3 "the new $n does not end later than the installed one: nothing written"
    names="$names $n"
done

now=$(date +%s)
for n in $names; do
    old=$pki/$n f=$in/$(printf '%s' "$n" | tr / _)
    if [ "$n" = ca.crt ]; then
        old_b64=$(base64 -w0 < "$old")
        new_b64=$(base64 -w0 < "$f")
    fi
    bk=$old.$now.bak
    [ ! -e "$bk" ] || die 77 "$bk exists: refusing to overwrite a backup"
    cp -p "$old" "$bk"
    cp -p "$old" "$old.hapki-new"
    cat "$f" > "$old.hapki-new"
    mv -f "$old.hapki-new" "$old"
    printf 'R %s %s\n' "$n" "$bk"
    printf '%s renew-ca %s backup=%s\n' "$stamp" "$n" "$bk" >> "$st/history"
done

# The exact value only; the file keeps its mode and owner (written through a copy of itself).
swap_ca() { # $1 file
    awk -v o="$old_b64" -v n="$new_b64" '
        { line = $0; cr = sub(/\r$/, "", line) }
        line ~ /^[ \t]*certificate-authority-data:[ \t]*/ {
            v = line; sub(/^[ \t]*certificate-authority-data:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
            if (v == o) { p = line; sub(/certificate-authority-data:.*/, "", p); line = p "certificate-authority-data: " n }
        }
        { printf "%s%s\n", line, (cr ? "\r" : "") }' "$1"
}

case " $names " in *" ca.crt "*) ;; *) old_b64= ;; esac
if [ -n "${old_b64:-}" ]; then
    for c in "$k"/*.conf; do
        if [ ! -f "$c" ] || [ -L "$c" ]; then continue; fi
        grep -q "certificate-authority-data: *$old_b64" "$c" || continue
        cp -p "$c" "$c.hapki-new"
        swap_ca "$c" > "$c.hapki-new"
        mv -f "$c.hapki-new" "$c"
        printf 'K %s\n' "$c"
        printf '%s renew-ca kubeconfig=%s\n' "$stamp" "$c" >> "$st/history"
    done
fi

[ "$role" = first ] || exit 0
if [ -z "${old_b64:-}" ]; then
    printf 'C -\n'
    exit 0
fi
patch_cluster_info swap_ca
# shellcheck disable=SC2154 # set by cluster_info.sh's patch_cluster_info
case $cluster_info_is in
    no-admin.conf) printf 'C not-updated(no-admin.conf)\n' ;;
    *) printf 'C %s\n' "$cluster_info_is" ;;
esac
[ "$cluster_info_is" != updated ] || printf '%s renew-ca cluster-info\n' "$stamp" >> "$st/history"
