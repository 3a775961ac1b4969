# Shared by every node script: a fixed locale and one way to describe paths.
LC_ALL=C
export LC_ALL
nl='
'
# The eight files kubeadm's control planes share (crate::pki::SHARED_FILES; tests/node_scripts.rs
# checks the two agree).
SHARED='ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key'
# Exit codes the operator side tells apart (crate::node::install_exit; the same test checks them).
# shellcheck disable=SC2034 # not every script uses every one
EX_LOCKED=75 EX_CHANGED=76 EX_UNSAFE_PATH=77 EX_AFTER_FAILED=78
# describe LINES: one record per "TAG PATH" line of LINES, in order, as
#   TAG KIND MODE UID GID SIZE SHA256 PATH
# (KIND file|dir|link|other|missing; "-" where a field does not apply; SHA256 "unreadable" for a
# file that cannot be read). The kinds come from test(1), a builtin; then ONE stat and ONE
# sha256sum for all the paths together and one awk to put the records together: a constant
# number of processes whatever the number of paths (a symlink is never followed: only real
# files and directories are passed on).
# With "fast" as $2, openssl hashes when the node has it (several times faster than coreutils
# on large artifacts; the same digest, the same "HASH *PATH" columns) and every path is absolute.
describe() {
    di=$1 dh=sha256sum
    [ "${2:-}" = fast ] && command -v openssl > /dev/null 2>&1 && dh=openssl
    set --
    dk='' df=''
    while IFS= read -r dr; do
        [ -n "$dr" ] || continue
        dp=${dr#* }
        case $dp in /*) ;; *) dh=sha256sum ;; esac
        if [ -L "$dp" ]; then
            dt='link'
        elif [ -d "$dp" ]; then
            dt=dir
            set -- "$@" "$dp"
        elif [ -f "$dp" ]; then
            dt='file' df=1
            set -- "$@" "$dp"
        elif [ -e "$dp" ]; then
            dt=other
        else
            dt=missing
        fi
        dk="$dk${dr%% *} $dt $dp$nl"
    done << DL
$di
DL
    {
        printf '%s\001\n' "$dk"
        if [ $# -gt 0 ]; then
            stat -c '%a %u %g %s %n' -- "$@" 2> /dev/null
            printf '\001\n'
            # Directories among them only earn a message on stderr, which goes; with no file
            # at all (a fresh node) there is nothing to hash.
            if [ -z "$df" ]; then
                :
            elif [ "$dh" = openssl ]; then
                openssl dgst -sha256 -r "$@" < /dev/null 2> /dev/null
            else
                sha256sum -- "$@" < /dev/null 2> /dev/null
            fi
        fi
    } | awk '
        $0 == "\001" { sec++; next }
        sec == 0 { rec[++n] = $0; next }
        sec == 1 {
            r = $0; f = ""
            for (i = 0; i < 4; i++) { j = index(r, " "); f = f substr(r, 1, j); r = substr(r, j + 1) }
            st[r] = substr(f, 1, length(f) - 1); next
        }
        sec == 2 {
            # sha256sum escapes a name holding a backslash: the line then starts with one.
            if (substr($0, 1, 1) == "\\") { h = substr($0, 2, 64); p = substr($0, 68); gsub(/\\\\/, "\\", p) }
            else { h = substr($0, 1, 64); p = substr($0, 67) }
            sha[p] = h; next
        }
        END {
            for (i = 1; i <= n; i++) {
                r = rec[i]; t = substr(r, 1, index(r, " ") - 1); r = substr(r, length(t) + 2)
                k = substr(r, 1, index(r, " ") - 1); p = substr(r, length(k) + 2)
                s = (p in st) ? st[p] : "- - - -"
                if (k == "dir") print t, k, s, "-", p
                else if (k == "file") print t, k, s, ((p in sha) ? sha[p] : "unreadable"), p
                else print t, k, "- - - - -", p
            }
        }'
}
# The "S PATH" lines of the eight shared files under $1, into $sl: what push compares (as
# `describe "$sl" | sha256sum`) before it writes.
shared_list() {
    sl=
    for n in $SHARED; do sl="${sl}S $1/$n$nl"; done
}
# SHA-256 of a file, hex: openssl where present (several times faster than coreutils here),
# sha256sum otherwise; both hash the same bytes.
hashf() {
    if command -v openssl > /dev/null 2>&1; then
        h=$(openssl dgst -sha256 -r < "$1") || return 1
    else
        h=$(sha256sum < "$1") || return 1
    fi
    printf '%s\n' "${h%% *}"
}
