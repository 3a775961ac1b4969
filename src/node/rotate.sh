# hapki rotate, on one node (after restart.sh's and cluster_info.sh's functions; see src/rotate).
# $1 kubernetes dir  $2 hapki's state dir on the node  $3 operation  $4 the node's address
# $5 stop timeout, seconds  $6 restart timeout, seconds  $7 this run's id  $8 role:
# first | control-plane | worker  $9 the phase (for the history)
# Operations:
#   read-state   the rotation's state directory ($1/hapki/rotate, first master only) on stdout
#                as "=== state NAME" sections; "=== none" when there is none.
#   write-state  stdin: "=== state NAME" sections written there (each through a temp file in
#                the same root-only directory, synced, renamed); "=== drop new|old" removes one.
#   plan         stdin: the desired state ("=== want NAME SHA256", "=== remove NAME",
#                "=== known B64", "=== cadata B64", "=== flag FILE", "=== renew"); prints one
#                "=== change KIND WHAT" line per difference; writes nothing.
#   apply        stdin: the same with "=== file NAME" + content instead of want; makes the node
#                so (files, kubeconfigs, the controller-manager's flag, `kubeadm certs renew all`
#                at switch), restarts what reads them, and prints snapshots before and after.
#   cluster-info stdin: "=== cadata B64": kube-public/cluster-info's CA data becomes it.
#   kubelet-cert the kubelet's client certificate (kubelet.conf's) as "=== kubelet" + PEM; a
#                worker's apply then gets a new one from hapki as "=== kubelet" + cert + key.
#   drain        what still depends on the old material: the snapshot, the trust files
#                ("=== trust NAME" + PEM), each kubeconfig's CA data ("=== cadata FILE B64"),
#                and on the first master each service-account token Secret's JWT header
#                ("=== token NAMESPACE NAME HEADER"; the token itself never leaves the node).
# Private keys arrive on stdin only. Exit: 0 done, 10 kubeadm failed, 11-13 a component did not
# come back healthy (restart.sh), 75 locked, 77 unsafe path, 78 cluster-info not updated.
set -eu
umask 077
k=$1 st=$2 op=$3 addr=$4 stop_limit=$5 limit=$6 stamp=$7 role=$8 phase=$9
died='' restoring='' in=''
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    died=1
    exit "$1"
}
# Whatever ends the script: the temp dir goes, manifests moved out go back, and a failure that
# did not say why (a command failing under set -e) still says where.
on_exit() {
    rc=$?
    [ -z "$in" ] || rm -rf "$in"
    [ -z "$restoring" ] || restore
    if [ "$rc" -ne 0 ] && [ -z "$died" ]; then
        printf 'hapki: the node script stopped (exit %s) during %s %s\n' "$rc" "$op" "$phase" >&2
    fi
}
trap on_exit EXIT
case $op in read-state | write-state | plan | apply | cluster-info | drain | kubelet-cert) ;; *) die 1 "bad operation" ;; esac
case $role in first | control-plane | worker) ;; *) die 1 "bad role" ;; esac
case $limit$stop_limit in '' | *[!0-9]*) die 1 "bad timeout" ;; esac
case $stamp$addr$phase in *[!A-Za-z0-9._:-]*) die 1 "bad arguments" ;; esac
pki=$k/pki man=$k/manifests out=$k/hapki-manifests-out hd=$k/hapki rd=$k/hapki/rotate
pending=$st/rotate.pending
FILES='ca.crt ca.key front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key sa.key sa.pub hapki-signing-ca.crt'

# $1 must be a real directory of root's that nobody else may write ($2 = 700: nobody else may
# even read), or absent.
safe_dir() {
    [ ! -L "$1" ] || die 77 "$1 is a symlink: refusing to use it; remove it"
    [ -e "$1" ] || return 0
    [ -d "$1" ] || die 77 "$1 is not a directory; remove it"
    set -- "$1" "$2" "$(stat -c '%u %a' "$1")"
    [ "${3% *}" = 0 ] || die 77 "$1 is owned by uid ${3% *}, not root: refusing to use it; remove it"
    sm=${3#* }
    sgo=${sm#"${sm%??}"}
    case $2:$sm:$sgo in
        700:700:* | any:*:[0145][0145]) ;;
        *) die 77 "$1 has mode $sm, looser than hapki allows: refusing to use it; remove it" ;;
    esac
}

# $1 must be a regular file of root's, mode 0600, with one link, or absent.
safe_file() {
    [ ! -L "$1" ] || die 77 "$1 is a symlink: refusing to use it; remove it"
    [ -e "$1" ] || return 0
    set -- "$1" "$(stat -c '%u %a %h %F' "$1")"
    case $2 in
        '0 600 1 regular file' | '0 600 1 regular empty file') ;;
        *) die 77 "$1 is not a root-only file (uid mode links type: $2): refusing to use it; remove it" ;;
    esac
}

state_dirs() {
    safe_dir "$k" any
    safe_dir "$hd" any
    safe_dir "$rd" 700
    for sd in new old new/etcd old/etcd; do safe_dir "$rd/$sd" 700; done
}

# The state directory's files; state.json last, so that a write cut short never leaves a
# state naming material that is not there yet.
state_names() {
    for sn in $FILES; do
        [ "$sn" = hapki-signing-ca.crt ] || printf 'new/%s\nold/%s\n' "$sn" "$sn"
    done
    printf '%s\n' state.json
}

read_state() {
    state_dirs
    if [ ! -f "$rd/state.json" ]; then
        printf '=== none\n'
        return 0
    fi
    for sn in $(state_names); do
        safe_file "$rd/$sn"
        [ -f "$rd/$sn" ] || continue
        printf '=== state %s\n' "$sn"
        cat "$rd/$sn"
    done
}

lock() {
    [ ! -L "$st" ] || die 77 "$st is a symlink: refusing to work through it"
    [ -d "$st" ] || mkdir -m 0700 "$st"
    command -v flock > /dev/null 2>&1 || die 1 "this node lacks flock(1) (util-linux), which hapki's lock needs"
    exec 9>> "$st/push.lock"
    flock -n 9 || die 75 "another hapki run holds the lock on this node ($st/push.lock); wait for it to end and try again"
}

# stdin's sections into files under $in: "=== KIND NAME..." opens one ($in/KIND.NAME, / as _)
# for file and state; the one-line kinds go to $in/KIND (one line each).
split_input() {
    in=$(mktemp -d "$k/.hapki-rotate.XXXXXX")
    awk -v d="$in" '
        /^=== / {
            f = ""
            if ($2 == "file" || $2 == "state") { n = $3; gsub(/\//, "_", n); f = d "/" $2 "." n }
            else if ($2 == "kubelet") f = d "/kubelet.new"
            else { line = $3; for (i = 4; i <= NF; i++) line = line " " $i; print line >> (d "/" $2) }
            next
        }
        f != "" { print > f }'
}

write_state() {
    mkdir -p "$hd"
    safe_dir "$hd" any
    for sd in "$rd" "$rd/new" "$rd/old" "$rd/new/etcd" "$rd/old/etcd"; do
        [ -e "$sd" ] || [ -L "$sd" ] || mkdir -m 0700 "$sd"
    done
    state_dirs
    # shellcheck disable=SC2013 # one name a word
    for sd in $(cat "$in/drop" 2> /dev/null); do
        case $sd in new | old) rm -rf "${rd:?}/$sd" && mkdir -m 0700 "$rd/$sd" ;; esac
    done
    for sn in $(state_names); do
        src=$in/state.$(printf '%s' "$sn" | tr / _)
        [ -f "$src" ] || continue
        safe_file "$rd/$sn"
        t=$(mktemp "$rd/.state.XXXXXX")
        cat "$src" > "$t"
        sync "$t"
        mv -f "$t" "$rd/$sn"
        printf '=== wrote %s\n' "$sn"
    done
    sync "$rd"
}

change() {
    printf '=== change %s\n' "$*"
    changes=$((changes + 1))
}

# The first value of certificate-authority-data in kubeconfig $1.
cadata_of() {
    awk '$1 == "certificate-authority-data:" { print $2; exit }' "$1"
}

# kube-controller-manager's --cluster-signing-cert-file in manifest $1.
signing_flag_of() {
    awk -F= '/^ *- --cluster-signing-cert-file=/ { print $2; exit }' "$1"
}

kcm_manifest() {
    if [ -f "$out/kube-controller-manager.yaml" ]; then
        printf '%s' "$out/kube-controller-manager.yaml"
    else
        printf '%s' "$man/kube-controller-manager.yaml"
    fi
}

# Whether leaf $1 is signed by the first certificate of CA bundle $2.
signed_by_first() {
    openssl x509 -in "$2" -out "$in/first.pem" 2> /dev/null || return 1
    openssl verify -no-CApath -partial_chain -CAfile "$in/first.pem" "$1" > /dev/null 2>&1
}

# Whether some leaf kubeadm renews is not signed by the first certificate of its CA.
leaves_need_renew() {
    for pair in apiserver.crt:ca.crt apiserver-kubelet-client.crt:ca.crt \
        front-proxy-client.crt:front-proxy-ca.crt apiserver-etcd-client.crt:etcd/ca.crt \
        etcd/server.crt:etcd/ca.crt etcd/peer.crt:etcd/ca.crt etcd/healthcheck-client.crt:etcd/ca.crt; do
        [ -f "$pki/${pair%%:*}" ] || continue
        signed_by_first "$pki/${pair%%:*}" "$pki/${pair#*:}" || return 0
    done
    for c in admin controller-manager scheduler; do
        [ -f "$k/$c.conf" ] || continue
        awk '$1 == "client-certificate-data:" { print $2; exit }' "$k/$c.conf" | base64 -d > "$in/leaf.pem" 2> /dev/null || return 0
        signed_by_first "$in/leaf.pem" "$pki/ca.crt" || return 0
    done
    return 1
}

# kubelet.conf's client certificate (embedded, or the file it names: a kubelet's
# kubelet-client-current.pem) into $in/kubelet.pem; its kubeconfig line's kind in $kk.
kubelet_client() {
    kc=$k/kubelet.conf
    [ -f "$kc" ] || return 1
    kk=data
    kf=$(awk '$1 == "client-certificate:" { print $2; exit }' "$kc")
    if [ -n "$kf" ]; then
        kk='file'
        [ -f "$kf" ] && openssl x509 -in "$kf" -out "$in/kubelet.pem" 2> /dev/null
    else
        awk '$1 == "client-certificate-data:" { print $2; exit }' "$kc" | base64 -d > "$in/kubelet.pem" 2> /dev/null
    fi
}

# Whether the kubelet's client certificate on this control plane is not signed by the first
# certificate of ca.crt (kubeadm certs renew leaves kubelet.conf alone).
kubelet_needs_reissue() {
    kubelet_client || return 1
    ! signed_by_first "$in/kubelet.pem" "$pki/ca.crt"
}

# A new client key and certificate for the kubelet (its subject kept: O=system:nodes,
# CN=system:node:NAME), signed by the first certificate of ca.crt with ca.key, installed
# where kubelet.conf looks: embedded, or a new kubelet-client-*.pem that the
# kubelet-client-current.pem link then names (as the kubelet's own rotation does).
reissue_kubelet_client() {
    cn=$(openssl x509 -noout -subject -nameopt RFC2253 -in "$in/kubelet.pem" | sed -n 's/.*CN=\([^,]*\).*/\1/p')
    case $cn in system:node:?*) ;; *) die 1 "kubelet.conf's client certificate is not a node's (CN $cn)" ;; esac
    openssl x509 -in "$pki/ca.crt" -out "$in/first.pem"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$in/ext"
    if ! openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$in/kubelet.key" \
        -subj "/O=system:nodes/CN=$cn" -out "$in/kubelet.csr" 2> /dev/null ||
        ! openssl x509 -req -in "$in/kubelet.csr" -CA "$in/first.pem" -CAkey "$pki/ca.key" -days 365 -sha256 \
            -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -extfile "$in/ext" -out "$in/kubelet.crt" 2> /dev/null; then
        die 10 "could not issue the kubelet's client certificate"
    fi
    install_kubelet_client
}

# $in/kubelet.crt and $in/kubelet.key where kubelet.conf looks: embedded, or a new
# kubelet-client-hapki-RUN.pem that the kubelet-client-current.pem link then names (as the
# kubelet's own rotation does).
install_kubelet_client() {
    if [ "$kk" = file ]; then
        kd=${kf%/*}
        safe_dir "$kd" any
        new=$kd/kubelet-client-hapki-$stamp.pem
        [ ! -L "$new.tmp" ] || die 77 "$new.tmp is a symlink: refusing to write through it"
        cat "$in/kubelet.crt" "$in/kubelet.key" > "$new.tmp"
        mv -f "$new.tmp" "$new"
        if [ -L "$kf" ]; then
            ln -sfn "$new" "$kf.hapki-new" && mv -fT "$kf.hapki-new" "$kf"
        else
            cp "$new" "$kf.hapki-new" && mv -f "$kf.hapki-new" "$kf"
        fi
        step "kubelet client certificate re-issued: $new"
        return 0
    fi
    cp -p "$kc" "$kc.hapki-new"
    awk -v c="$(base64 -w0 < "$in/kubelet.crt")" -v key="$(base64 -w0 < "$in/kubelet.key")" '
        $1 == "client-certificate-data:" { p = $0; sub(/client-certificate-data:.*/, "", p); $0 = p "client-certificate-data: " c }
        $1 == "client-key-data:" { p = $0; sub(/client-key-data:.*/, "", p); $0 = p "client-key-data: " key }
        { print }' "$kc" > "$kc.hapki-new"
    mv -f "$kc.hapki-new" "$kc"
    step "kubelet client certificate re-issued in $kc"
}

# A worker's new kubelet client certificate and key, issued by hapki from the new CA (a worker
# holds no CA key), from stdin's "=== kubelet" section.
install_given_kubelet_client() {
    kubelet_client || return 0
    if ! openssl x509 -in "$in/kubelet.new" -out "$in/kubelet.crt" 2> /dev/null ||
        ! openssl pkey -in "$in/kubelet.new" -out "$in/kubelet.key" 2> /dev/null; then
        die 1 "the kubelet client certificate hapki sent does not parse"
    fi
    install_kubelet_client
}

# Compares the node with the desired state on stdin (split into $in); "=== change" lines.
compare() {
    changes=0
    for n in $FILES; do
        sn=$(printf '%s' "$n" | tr / _)
        if [ -f "$in/file.$sn" ]; then
            want=$(hashf "$in/file.$sn")
        else
            want=
            [ ! -f "$in/want" ] || want=$(awk -v n="$n" '$1 == n { print $2 }' "$in/want")
        fi
        [ -n "$want" ] || continue
        [ ! -L "$pki/$n" ] || die 77 "$pki/$n is a symlink: refusing to write through it"
        have=-
        [ ! -f "$pki/$n" ] || have=$(hashf "$pki/$n")
        [ "$have" = "$want" ] || change file "$n"
    done
    # shellcheck disable=SC2013 # one name a word
    for n in $(cat "$in/remove" 2> /dev/null); do
        case " $FILES " in *" $n "*) [ ! -e "$pki/$n" ] || change remove "$n" ;; esac
    done
    if [ -f "$in/cadata" ]; then
        want=$(cat "$in/cadata")
        for c in "$k"/*.conf; do
            if [ ! -f "$c" ] || [ -L "$c" ]; then continue; fi
            have=$(cadata_of "$c")
            [ "$have" != "$want" ] || continue
            grep -qxF "$have" "$in/known" 2> /dev/null && change kubeconfig "$c"
        done
    fi
    if [ -f "$in/flag" ] && [ "$role" != worker ] && [ -f "$(kcm_manifest)" ]; then
        [ "$(signing_flag_of "$(kcm_manifest)")" = "$pki/$(cat "$in/flag")" ] ||
            change flag kube-controller-manager --cluster-signing-cert-file
    fi
    if [ -f "$in/renew" ] && [ "$role" != worker ]; then
        command -v openssl > /dev/null 2>&1 || die 1 "this node lacks openssl, which checks who signed its certificates"
        ! leaves_need_renew || change renew "kubeadm certs renew all (leaves not signed by the new CAs)"
        ! kubelet_needs_reissue || change renew "the kubelet's client certificate (kubelet.conf)"
    fi
    [ ! -f "$in/kubelet.new" ] || change renew "the kubelet's client certificate (kubelet.conf), issued by hapki"
    [ ! -f "$pending" ] || change restart "an interrupted run left the restart to do"
}

# Writes file $2 (content) to $1 through a copy of itself (its mode and owner kept), or as a
# new 0644 certificate.
put() {
    if [ -f "$1" ]; then cp -p "$1" "$1.hapki-new"; else : > "$1.hapki-new" && chmod 0644 "$1.hapki-new"; fi
    cat "$2" > "$1.hapki-new"
    sync "$1.hapki-new"
    mv -f "$1.hapki-new" "$1"
    step "wrote $1"
}

set_kubeconfigs() {
    [ -f "$in/cadata" ] || return 0
    want=$(cat "$in/cadata")
    for c in "$k"/*.conf; do
        if [ ! -f "$c" ] || [ -L "$c" ]; then continue; fi
        have=$(cadata_of "$c")
        [ "$have" != "$want" ] || continue
        grep -qxF "$have" "$in/known" 2> /dev/null || continue
        cp -p "$c" "$c.hapki-new"
        awk -v n="$want" -v k="$in/known" '
            BEGIN { while ((getline l < k) > 0) known[l] = 1 }
            { line = $0; cr = sub(/\r$/, "", line) }
            line ~ /^[ \t]*certificate-authority-data:[ \t]*/ {
                v = line; sub(/^[ \t]*certificate-authority-data:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
                if (v in known) { p = line; sub(/certificate-authority-data:.*/, "", p); line = p "certificate-authority-data: " n }
            }
            { printf "%s%s\n", line, (cr ? "\r" : "") }' "$c" > "$c.hapki-new"
        mv -f "$c.hapki-new" "$c"
        step "kubeconfig $c"
    done
}

# While the controller-manager's manifest is out: its signing certificate flag.
set_flag() {
    [ -f "$in/flag" ] || return 0
    mf=$(kcm_manifest)
    [ -f "$mf" ] || return 0
    want=$pki/$(cat "$in/flag")
    [ "$(signing_flag_of "$mf")" != "$want" ] || return 0
    cp -p "$mf" "$mf.hapki-new"
    awk -v w="$want" '/^ *- --cluster-signing-cert-file=/ { sub(/=.*/, "=" w) } { print }' "$mf" > "$mf.hapki-new"
    mv -f "$mf.hapki-new" "$mf"
    step "kube-controller-manager --cluster-signing-cert-file=$want"
}

restart_kubelet() {
    if command -v systemctl > /dev/null 2>&1 && [ -d /run/systemd/system ] &&
        systemctl is-active --quiet kubelet; then
        systemctl restart kubelet && step "kubelet restarted"
    fi
}

apply() {
    compare
    if [ "$changes" -eq 0 ]; then
        printf '=== unchanged\n'
        return 0
    fi
    : > "$pending"
    for n in $FILES; do
        sn=$(printf '%s' "$n" | tr / _)
        [ ! -f "$in/file.$sn" ] || [ "$(hashf "$in/file.$sn")" = "$(hashf "$pki/$n" 2> /dev/null || echo -)" ] ||
            put "$pki/$n" "$in/file.$sn"
    done
    # shellcheck disable=SC2013 # one name a word
    for n in $(cat "$in/remove" 2> /dev/null); do
        case " $FILES " in *" $n "*) [ ! -e "$pki/$n" ] || { rm -f "$pki/$n" && step "removed $pki/$n"; } ;; esac
    done
    if [ -f "$in/renew" ] && [ "$role" != worker ] && leaves_need_renew; then
        command -v kubeadm > /dev/null 2>&1 || die 1 "kubeadm is not on this node's PATH"
        kubeadm certs renew all >&2 || die 10 "kubeadm certs renew all failed"
        step "kubeadm certs renew all"
    fi
    if [ -f "$in/renew" ] && [ "$role" != worker ] && kubelet_needs_reissue; then
        reissue_kubelet_client
    fi
    [ ! -f "$in/kubelet.new" ] || install_given_kubelet_client
    set_kubeconfigs
    if [ "$role" != worker ] && [ -d "$man" ]; then
        # shellcheck disable=SC2034 # read by restart.sh's only()
        restart=$COMPONENTS
        restart_components set_flag
    fi
    restart_kubelet
    rm -f "$pending"
    printf '%s rotate %s\n' "$stamp" "$phase" >> "$st/history"
}

# Every certificate-authority-data value of kubeconfig $1 becomes the one on stdin's cadata.
set_cadata() {
    awk -v n="$(cat "$in/cadata")" '
        /^[ \t]*certificate-authority-data:/ { p = $0; sub(/certificate-authority-data:.*/, "", p); $0 = p "certificate-authority-data: " n }
        { print }' "$1"
}

cluster_info() {
    patch_cluster_info set_cadata
    # shellcheck disable=SC2154 # set by cluster_info.sh's patch_cluster_info
    case $cluster_info_is in
        no-admin.conf) printf '=== cluster-info skipped (no %s)\n' "$k/admin.conf" ;;
        *) printf '=== cluster-info %s\n' "$cluster_info_is" ;;
    esac
}

drain() {
    snapshot now
    for n in ca.crt front-proxy-ca.crt etcd/ca.crt; do
        [ -f "$pki/$n" ] || continue
        printf '=== trust %s\n' "$n"
        cat "$pki/$n"
    done
    for c in "$k"/*.conf; do
        [ -f "$c" ] || continue
        printf '=== cadata %s %s\n' "$c" "$(cadata_of "$c")"
    done
    [ "$role" = first ] && [ -f "$k/admin.conf" ] && command -v kubectl > /dev/null 2>&1 || return 0
    # Only each JWT's first part (its header: alg, kid) is printed.
    if ! tok=$(kubectl --kubeconfig "$k/admin.conf" get secrets -A --field-selector type=kubernetes.io/service-account-token \
        -o go-template='{{range .items}}{{.metadata.namespace}} {{.metadata.name}} {{index .data "token" | base64decode}}{{"\n"}}{{end}}'); then
        printf '=== tokens-unreadable\n'
        return 0
    fi
    printf '%s\n' "$tok" | awk 'NF == 3 { split($3, p, "."); print "=== token " $1 " " $2 " " p[1] }'
}

case $op in
    read-state) read_state ;;
    write-state)
        lock
        split_input
        write_state
        ;;
    plan)
        split_input
        compare
        ;;
    apply)
        for p in "$k" "$pki" "$pki/etcd" "$man" "$out" "$st"; do
            [ ! -L "$p" ] || die 77 "$p is a symlink: refusing to work through it"
        done
        lock
        if [ "$role" != worker ] && [ -d "$man" ]; then
            take_out_dir
            restoring=1
            trap on_exit EXIT
            snapshot before
        fi
        split_input
        apply
        [ "$role" = worker ] || [ ! -d "$man" ] || { rmdir "$out" 2> /dev/null || true; snapshot after; }
        ;;
    cluster-info)
        lock
        split_input
        cluster_info
        ;;
    drain)
        drain
        ;;
    kubelet-cert)
        in=$(mktemp -d "$k/.hapki-rotate.XXXXXX")
        if kubelet_client && [ -s "$in/kubelet.pem" ]; then
            printf '=== kubelet\n'
            cat "$in/kubelet.pem"
        fi
        ;;
esac
