# hapki node backups: list or prune the --replace backups under $st/backup, under push's lock
# (flock on $st/push.lock), so a prune never races a push that is writing a backup.
# Only entries of $st/backup that are real directories (not symlinks) with plain names count;
# nothing is ever followed through a link (stat and find do not follow, rm -rf removes a link
# inside a backup, never its target).
# $1 state dir   $2 list | prune | prune-dry   $3 keep (prune: how many newest stay; >= 1)
# $4 this run's id (for the history line)
# Output, newest first: "B <name> <mtime, UTC>" per backup, then for list "F <path>" per file in
# one (find, no link followed); for prune "R <name>" per backup removed (or, dry, that would be).
set -eu
umask 077
TZ=UTC0
export TZ
st=$1 op=$2 keep=$3 stamp=$4
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    exit "$1"
}
case $op in list | prune | prune-dry) ;; *) die 1 "bad operation" ;; esac
case $keep in '' | *[!0-9]* | 0*) die 1 "bad keep count" ;; esac
case $stamp in '' | *[!A-Za-z0-9._-]*) die 1 "bad arguments" ;; esac
b=$st/backup
[ -L "$st" ] || [ -L "$st/push.lock" ] || [ -L "$b" ] &&
    die "$EX_UNSAFE_PATH" "$st, $st/push.lock or $b is a symlink: refusing to work through it"
[ -d "$b" ] || exit 0
for d in "$st" "$b"; do
    # shellcheck disable=SC2046
    set -- $(stat -c '%u %a' -- "$d")
    [ "$1" = 0 ] || die "$EX_UNSAFE_PATH" "$d is owned by uid $1, not root; refusing this node (fix: chown root:root $d)"
    case ${2#"${2%??}"} in *[2367]*) die "$EX_UNSAFE_PATH" "$d is writable by group or others (mode $2); refusing this node (fix: chmod go-w $d)" ;; esac
done
command -v flock > /dev/null 2>&1 || die 1 "this node lacks flock(1) (util-linux), which hapki's lock needs"
exec 9>> "$st/push.lock"
flock -n 9 || die "$EX_LOCKED" "another hapki push holds the lock on this node ($st/push.lock); wait for it to end and try again"
set -- "$b"/*
[ -e "$1" ] || [ -L "$1" ] || exit 0
# One stat for every entry: type, mtime, path; real directories only, newest first. Newest is
# the latest "backup=" line of the history (the order the pushes made them: a directory's mtime
# changes whenever anything in it does); backups the history does not name count as older, by
# mtime.
dirs=$(stat -c '%F|%y|%n' -- "$@" | awk -F '|' -v h="$st/history" '
BEGIN { while ((getline l < h) > 0) { n++; i = index(l, " backup="); if (i) idx[substr(l, i + 8)] = n } }
$1 == "directory" { p = substr($0, length($1) + length($2) + 3); printf "%09d|%s|%s\n", idx[p] + 0, $2, p }' |
    sort -t '|' -k 1,1r -k 2,2r) || :
n=0 gone=
while IFS='|' read -r _ t p; do
    [ -n "$p" ] || continue
    name=${p##*/}
    case $name in .* | *[!A-Za-z0-9._-]*) continue ;; esac
    n=$((n + 1))
    printf 'B %s %s\n' "$name" "$t"
    if [ "$op" != list ] && [ "$n" -gt "$keep" ]; then
        printf 'R %s\n' "$name"
        gone="$gone $name"
    fi
done <<EOF
$dirs
EOF
if [ "$op" = list ]; then
    find "$b" -mindepth 2 ! -type d -print | sed 's/^/F /'
elif [ "$op" = prune ] && [ -n "$gone" ]; then
    for name in $gone; do
        # Still a real directory (only root writes here, and we hold the lock).
        [ -d "$b/$name" ] && [ ! -L "$b/$name" ] && rm -rf -- "${b:?}/$name"
    done
    printf '%s prune keep=%s removed=%s\n' "$stamp" "$keep" "$(printf '%s' "${gone# }" | tr ' ' ,)" >> "$st/history"
fi
