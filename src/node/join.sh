# hapki join, on the joining node: `kubeadm join --config FILE [ARG...]`, where FILE is a 0600
# JoinConfiguration in a fresh root-only directory, removed when kubeadm ends.
#   $1 control-plane endpoint (host:port)   $2 CA hash (sha256:<64 hex>)
#   $3 role (control-plane | worker)          $4 advertise address (may be empty)
#   $5... extra kubeadm arguments (hapki has refused the ones that carry secrets)
# The bootstrap token is the one line of stdin. It is written with the shell's builtin printf
# and never becomes an argument of any program: /proc/*/cmdline never shows it.
set -eu
umask 077
LC_ALL=C
export LC_ALL
endpoint=$1 hash=$2 role=$3 adv=$4
shift 4

bad() { echo "hapki: $*" >&2; exit 2; }

IFS= read -r token || bad "no bootstrap token on stdin"
case $token in ??????.????????????????) ;; *) bad "malformed bootstrap token" ;; esac
case $token in *[!a-z0-9.]* | *.*.*) bad "malformed bootstrap token" ;; esac
# Every value goes into YAML between double quotes: none may hold a quote or a backslash.
case $endpoint in '' | *[!A-Za-z0-9.:[\]-]*) bad "malformed endpoint" ;; esac
case $hash in sha256:*[!0-9a-f]* | sha256:) bad "malformed CA hash" ;; sha256:*) ;; *) bad "malformed CA hash" ;; esac
case $adv in *[!0-9A-Fa-f.:]*) bad "malformed advertise address" ;; esac
case $role in control-plane | worker) ;; *) bad "unknown role $role" ;; esac

command -v kubeadm >/dev/null 2>&1 || bad "kubeadm is not installed on this node"
version=$(kubeadm version -o short 2>/dev/null) || bad "kubeadm version failed on this node"
minor=${version#v1.}
minor=${minor%%.*}
# JoinConfiguration versions: v1beta2 is read by 1.15-1.21, v1beta3 by 1.22+, v1beta4 by 1.31+.
case $minor in
    1[5-9] | 2[01]) api=v1beta2 ;;
    2[2-9] | 30) api=v1beta3 ;;
    3[1-9] | [4-9][0-9]) api=v1beta4 ;;
    *) bad "kubeadm $version on this node is not supported (hapki needs kubeadm 1.15 or newer)" ;;
esac

dir=$(mktemp -d) || bad "cannot create a private directory for the join configuration"
trap 'rm -rf "$dir"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
{
    printf 'apiVersion: kubeadm.k8s.io/%s\nkind: JoinConfiguration\n' "$api"
    printf 'discovery:\n  bootstrapToken:\n    apiServerEndpoint: "%s"\n' "$endpoint"
    printf '    token: "%s"\n    caCertHashes:\n    - "%s"\n' "$token" "$hash"
    if [ "$role" = control-plane ]; then
        printf 'controlPlane:\n'
        if [ -n "$adv" ]; then
            printf '  localAPIEndpoint:\n    advertiseAddress: "%s"\n' "$adv"
        else
            printf '  {}\n'
        fi
    fi
} >"$dir/join.yaml"
token=
rc=0
kubeadm join --config "$dir/join.yaml" "$@" </dev/null || rc=$?
exit "$rc"
