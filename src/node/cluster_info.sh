# kube-public/cluster-info's kubeconfig rewritten, shared by `hapki pki renew-ca` (renew_ca.sh)
# and `hapki rotate` (rotate.sh), which set k (kubernetes dir) and in (a root-only temp dir),
# and define die(). patch_cluster_info CMD...: reads data.kubeconfig through $k/admin.conf, runs
# `CMD... FILE` (its stdout: the new kubeconfig) and, when that differs, merge-patches
# data.kubeconfig only (public: a CA certificate, no credentials; the bootstrap signer re-signs
# its jws-kubeconfig-* keys). Sets cluster_info_is to updated, unchanged or no-admin.conf;
# exits 78 through die when kubectl is missing or fails.
# Their names, for shellcheck (this fragment alone assigns none; an unset one only becomes empty).
: "${k=}" "${in=}"
# shellcheck disable=SC2034 # cluster_info_is: read by the script after this fragment
patch_cluster_info() {
    if [ ! -f "$k/admin.conf" ]; then
        cluster_info_is=no-admin.conf
        return 0
    fi
    command -v kubectl > /dev/null 2>&1 || die 78 "kubectl is not on this node's PATH: update kube-public/cluster-info by hand"
    kc="kubectl --kubeconfig $k/admin.conf -n kube-public"
    $kc get configmap cluster-info -o 'jsonpath={.data.kubeconfig}' > "$in/cluster-info" ||
        die 78 "could not read kube-public/cluster-info through $k/admin.conf"
    "$@" "$in/cluster-info" > "$in/cluster-info.new"
    if cmp -s "$in/cluster-info" "$in/cluster-info.new"; then
        cluster_info_is=unchanged
        return 0
    fi
    if ! patch=$($kc create configmap cluster-info --from-file=kubeconfig="$in/cluster-info.new" --dry-run=client -o json) ||
        ! $kc patch configmap cluster-info --type merge -p "$patch" > /dev/null; then
        die 78 "could not update kube-public/cluster-info through $k/admin.conf"
    fi
    cluster_info_is=updated
}
