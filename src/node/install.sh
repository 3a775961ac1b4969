# hapki node install: stage, verify on the node, install by rename, verify again, record.
# Runs under a per-node lock; every write before the final renames goes to a 0700 staging
# directory on the same filesystem as the pki directory, so a failure (disk full, lost
# connection, bad signature) leaves the installed files exactly as they were.
#
# $1 kubernetes dir   $2 state dir   $3 action (install|replace)   $4 signer principal
# $5 sha256 of the shared-file state the operator planned against (see shared_state)
# $6 bundle serial    $7 timestamp for the backup directory
# then per payload part: NAME LENGTH MODE — parts arrive concatenated on stdin, in order:
# allowed_signers, bundle.json, SHA256SUMS, SHA256SUMS.sig, pki/...
set -eu
umask 077
k=$1 st=$2 action=$3 principal=$4 expect=$5 serial=$6 stamp=$7
shift 7
pki=$k/pki
case $action in install | replace) ;; *) printf 'hapki: bad action\n' >&2; exit 1 ;; esac
case $principal$expect$serial$stamp in *[!A-Za-z0-9@._-]*) printf 'hapki: bad arguments\n' >&2; exit 1 ;; esac
stage=
locked=
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    exit "$1"
}
cleanup() {
    [ -n "$stage" ] && rm -rf "$stage"
    [ -n "$locked" ] && rm -rf "$st/lock"
    return 0
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

[ -L "$k" ] || [ -L "$pki" ] || [ -L "$pki/etcd" ] || [ -L "$st" ] &&
    die 77 "$k, $pki, $pki/etcd or $st is a symlink: refusing to write through it"
mkdir -p "$k" "$st"
chmod 0700 "$st"
# The lock: mkdir is atomic. Its owner is recorded as pid and start time, so a lock left by a
# push that was cut off (lost connection, killed session) is recognised as dead and taken
# over — even when the dead shell lingers as an unreaped zombie or its pid was reused.
proc_id() { # pid -> "pid starttime", empty if the process is gone or a zombie
    [ -r "/proc/$1/stat" ] || return 0
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    set -- $s
    [ "$1" = Z ] && return 0
    shift 19
    printf '%s' "$1"
}
me="$$ $(proc_id $$)"
if ! mkdir "$st/lock" 2>/dev/null; then
    owner=$(head -c 100 "$st/lock/owner" 2>/dev/null) || owner=
    opid=${owner%% *}
    case $opid in '' | *[!0-9]*) opid= ;; esac
    if [ -n "$opid" ] && [ "$owner" = "$opid $(proc_id "$opid")" ]; then
        die 75 "another hapki push holds the lock on this node (pid $opid); wait for it, or remove $st/lock if no push is running"
    fi
    rm -rf "$st/lock"
    mkdir "$st/lock" || die 75 "could not take the lock $st/lock"
fi
locked=1
printf '%s\n' "$me" > "$st/lock/owner"

# Staging left by an interrupted push goes first; we hold the lock, so nobody else is staging.
for g in "$k"/.hapki-stage.*; do
    [ -d "$g" ] && rm -rf "$g"
done

got=$(shared_state "$pki" | sha256sum)
[ "${got%% *}" = "$expect" ] || die 76 "the shared files on this node changed while hapki was planning; run push again"

stage=$(mktemp -d "$k/.hapki-stage.XXXXXX")
cat > "$stage/payload" || die 1 "could not receive the bundle (disk full?)"
mkdir -p "$stage/b/pki/etcd"
off=1
parts=
while [ $# -ge 3 ]; do
    name=$1 len=$2 mode=$3
    shift 3
    case $name$len$mode in *..* | *[!A-Za-z0-9/._-]*) die 1 "bad payload part $name" ;; esac
    case $len$mode in *[!0-9]*) die 1 "bad payload part $name" ;; esac
    case $name in
    allowed_signers) dest=$stage/allowed_signers ;;
    bundle.json | SHA256SUMS | SHA256SUMS.sig) dest=$stage/b/$name ;;
    pki/*) dest=$stage/b/$name parts="$parts $name:$mode" ;;
    *) die 1 "unexpected payload part $name" ;;
    esac
    tail -c +"$off" "$stage/payload" | head -c "$len" > "$dest" || die 1 "could not stage $name (disk full?)"
    [ "$(wc -c < "$dest")" -eq "$len" ] || die 1 "staging $name came out short (disk full or truncated upload)"
    off=$((off + len))
done
[ "$(wc -c < "$stage/payload")" -eq $((off - 1)) ] || die 1 "the upload is truncated or has trailing bytes"
rm -f "$stage/payload"

# Verify the bytes on this node's disk with this node's own tools.
(cd "$stage/b" && ssh-keygen -Y verify -f "$stage/allowed_signers" -I "$principal" -n hapki-bundle \
    -s SHA256SUMS.sig < SHA256SUMS > /dev/null 2>&1) ||
    die 3 "the bundle signature does not verify on this node (ssh-keygen -Y verify failed)"
(cd "$stage/b" && sha256sum -c --strict --quiet SHA256SUMS > /dev/null 2>&1) ||
    die 3 "a staged file does not match SHA256SUMS on this node (corrupted in transit?)"
for p in $parts; do
    n=${p%%:*}
    grep -q "^[0-9a-f]\{64\}  $n\$" "$stage/b/SHA256SUMS" || die 3 "$n is not covered by SHA256SUMS"
done

mkdir -p "$pki/etcd"
chown 0:0 "$pki" "$pki/etcd"
chmod 0755 "$pki" "$pki/etcd"
# Modes and owner are set on the staged copies, so each rename publishes a finished file.
for p in $parts; do
    n=${p%%:*} m=${p#*:}
    chown 0:0 "$stage/b/$n"
    chmod "$m" "$stage/b/$n"
done

# Keep whatever is there now, so a failed rename can be undone and --replace leaves a backup.
bk=$st/backup/$stamp
mkdir -p "$bk/etcd"
had=
for p in $parts; do
    n=${p%%:*} rel=${n#pki/}
    if [ -e "$pki/$rel" ] || [ -L "$pki/$rel" ]; then
        cp -P -p "$pki/$rel" "$bk/$rel" || die 1 "could not back up $pki/$rel (disk full?)"
        had="$had $rel"
    fi
done

done_list=
rollback() {
    for r in $done_list; do
        case " $had " in
        *" $r "*) mv -f "$bk/$r" "$pki/$r" ;;
        *) rm -f "$pki/$r" ;;
        esac
    done
}
for p in $parts; do
    n=${p%%:*} rel=${n#pki/}
    # rename(2) replaces a symlink at the target itself; it never writes through it.
    if ! mv -f "$stage/b/$n" "$pki/$rel"; then
        rollback
        die 1 "could not install $pki/$rel; the previous files were restored"
    fi
    done_list="$done_list $rel"
done

if ! (cd "$k" && grep ' pki/' "$stage/b/SHA256SUMS" | sha256sum -c --strict --quiet > /dev/null 2>&1); then
    rollback
    die 3 "the installed files do not match SHA256SUMS; the previous files were restored"
fi

if [ "$action" != replace ] || [ -z "$had" ]; then
    rm -rf "$bk"
fi
rmdir "$st/backup" 2>/dev/null || true
cp "$stage/b/bundle.json" "$st/.last-bundle.json.tmp" && mv -f "$st/.last-bundle.json.tmp" "$st/last-bundle.json"
printf '%s\n' "$serial" > "$st/.last-serial.tmp" && mv -f "$st/.last-serial.tmp" "$st/last-serial"
printf '%s serial=%s signer=%s action=%s\n' "$stamp" "$serial" "$principal" "$action" >> "$st/history"
[ -n "$had" ] && [ "$action" = replace ] && printf 'backup %s\n' "$bk"
printf 'installed\n'
