# Shared by every node script: a fixed locale and one way to describe a path.
LC_ALL=C
export LC_ALL
statline() {
    if [ -L "$2" ]; then
        printf '%s link - - - - - %s\n' "$1" "$2"
    elif [ -d "$2" ]; then
        printf '%s dir %s - %s\n' "$1" "$(stat -c '%a %u %g %s' "$2")" "$2"
    elif [ -f "$2" ]; then
        h=$(sha256sum < "$2" 2>/dev/null) || h=unreadable
        printf '%s file %s %s %s\n' "$1" "$(stat -c '%a %u %g %s' "$2")" "${h%% *}" "$2"
    elif [ -e "$2" ]; then
        printf '%s other - - - - - %s\n' "$1" "$2"
    else
        printf '%s missing - - - - - %s\n' "$1" "$2"
    fi
}
SHARED='ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key'
# The state of the eight shared files, one S line each: what push compares before it writes.
shared_state() {
    for n in $SHARED; do
        statline S "$1/$n"
    done
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
