# hapki node install: stage, verify on the node, install by rename, verify again, record.
# Runs under a per-node lock; every write before the final renames goes to a 0700 staging
# directory on the same filesystem as the pki directory, so a failure (disk full, lost
# connection, bad signature) leaves the installed files exactly as they were.
#
# Artifacts (offline-installer files) are staged one by one, each in a 0700 directory next to
# its destination (same filesystem), and checked against the signed SHA256SUMS as they arrive;
# nothing is moved into place before the operator, who verifies the whole bundle while it
# streams, sends the word "commit" after the last byte. Anything else (a verification failure,
# a lost connection) removes every staged byte.
#
# $1 kubernetes dir   $2 state dir   $3 action (install|replace|none: leave the PKI alone)
# $4 signer principal
# $5 sha256 of the shared-file state the operator planned against (see shared_state)
# $6 bundle serial    $7 timestamp for the backup directory
# then per payload part: NAME LENGTH MODE — or, for artifacts, artifacts/NNNN LENGTH MODE DEST
# OWNER AFTER (AFTER "-" for none) — parts arrive concatenated on stdin, in order:
# allowed_signers, bundle.json, SHA256SUMS, SHA256SUMS.sig, pki/..., artifacts/...,
# then the line "commit".
set -eu
umask 077
k=$1 st=$2 action=$3 principal=$4 expect=$5 serial=$6 stamp=$7
shift 7
pki=$k/pki
case $action in install | replace | none) ;; *) printf 'hapki: bad action\n' >&2; exit 1 ;; esac
case $principal$expect$serial$stamp in *[!A-Za-z0-9@._-]*) printf 'hapki: bad arguments\n' >&2; exit 1 ;; esac
stage=
locked=
die() { # exit code, message
    printf 'hapki: %s\n' "$2" >&2
    exit "$1"
}
astages=
made_dirs=
renaming=
cleanup() {
    # Cut off (a signal, a lost connection) between the first rename and the last: put back
    # what this push had renamed before the staged copies (and the kept old files) go.
    [ -n "$renaming" ] && rollback
    [ -n "$stage" ] && rm -rf "$stage"
    for g in $astages; do rm -rf "$g"; done
    # Directories created for artifacts that were never installed: only empty ones go.
    for d in $made_dirs; do rmdir "$d" 2>/dev/null; done
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
mkdir -p "$stage/b/pki/etcd"
parts=
arts=
checked=
# The signature and the small entries are checked before the first artifact byte is read, so a
# bad bundle costs no transfer.
check_signed() {
    (cd "$stage/b" && ssh-keygen -Y verify -f "$stage/allowed_signers" -I "$principal" -n hapki-bundle \
        -s SHA256SUMS.sig < SHA256SUMS > /dev/null 2>&1) ||
        die 3 "the bundle signature does not verify on this node (ssh-keygen -Y verify failed)"
    n_list=bundle.json
    for p in $parts; do n_list="$n_list ${p%%:*}"; done
    for n in $n_list; do
        grep -q "^[0-9a-f]\{64\}  $n\$" "$stage/b/SHA256SUMS" || die 3 "$n is not covered by SHA256SUMS"
        grep "^[0-9a-f]\{64\}  $n\$" "$stage/b/SHA256SUMS"
    done > "$stage/small.sums"
    (cd "$stage/b" && sha256sum -c --strict --quiet "$stage/small.sums" > /dev/null 2>&1) ||
        die 3 "a staged file does not match SHA256SUMS on this node (corrupted in transit?)"
    checked=1
}
while [ $# -ge 3 ]; do
    name=$1 len=$2 mode=$3
    shift 3
    case $name$len$mode in *..* | *[!A-Za-z0-9/._-]*) die 1 "bad payload part $name" ;; esac
    case $len$mode in *[!0-9]*) die 1 "bad payload part $name" ;; esac
    case $name in
    allowed_signers) dest=$stage/allowed_signers ;;
    bundle.json | SHA256SUMS | SHA256SUMS.sig) dest=$stage/b/$name ;;
    pki/*) dest=$stage/b/$name parts="$parts $name:$mode" ;;
    artifacts/[0-9][0-9][0-9][0-9]*)
        [ $# -ge 3 ] || die 1 "artifact part $name lacks its dest, owner and action"
        adest=$1 owner=$2 after=$3
        shift 3
        case $after in - | restart-kubelet | daemon-reload | import-images) ;; *) die 1 "unknown after action $after" ;; esac
        case $adest in /*) ;; *) die 1 "artifact dest $adest is not absolute" ;; esac
        case $adest$owner in *[!A-Za-z0-9/._+@:,=-]*) die 1 "artifact dest $adest or owner $owner has a character outside hapki's alphabet" ;; esac
        [ -z "$checked" ] && check_signed
        want=$(grep "^[0-9a-f]\{64\}  $name\$" "$stage/b/SHA256SUMS") || die 3 "$name is not covered by SHA256SUMS"
        want=${want%% *}
        d=${adest%/*}
        [ -n "$d" ] || d=/
        if [ ! -d "$d" ]; then
            # Remember the directories created here (outermost first), to remove them if the
            # push does not complete.
            top=$d new=
            while [ ! -e "$top" ] && [ ! -L "$top" ]; do new="$top $new" top=${top%/*}; done
            mkdir -p "$d" || die 1 "could not create $d for $adest"
            for x in $new; do made_dirs="$x $made_dirs"; done
        fi
        [ -L "$adest" ] && [ -d "$adest" ] && die 77 "$adest is a symlink to a directory: refusing to replace it"
        [ -d "$adest" ] && [ ! -L "$adest" ] && die 1 "$adest is a directory; move it away and push again"
        # Staging left by an interrupted push (not this push's own) goes first.
        for g in "$d"/.hapki-stage.*; do
            [ -d "$g" ] || continue
            case " $stage $astages " in *" $g "*) continue ;; esac
            rm -rf "$g"
        done
        sd=$(mktemp -d "$d/.hapki-stage.XXXXXX") || die 1 "could not stage in $d"
        astages="$astages $sd"
        # dd with 128 KiB blocks (cat's size) costs a fraction of head's 8 KiB reads on GiB
        # payloads, and a third of the kernel time of 1 MiB blocks, which overflow the CPU
        # cache between the pipe read and the file write (measured: 1.0 s against 3-4 s of
        # system time per GiB). With count_bytes it never reads past this part (the next part
        # follows on the same stdin).
        dd of="$sd/f" bs=128k count="$len" iflag=count_bytes,fullblock status=none ||
            die 1 "could not stage $adest (disk full?)"
        [ "$(stat -c %s "$sd/f")" -eq "$len" ] || die 1 "staging $adest came out short (disk full or truncated upload)"
        got=$(hashf "$sd/f") || die 1 "could not hash the staged $adest"
        [ "$got" = "$want" ] || die 3 "the staged $adest does not match SHA256SUMS on this node (corrupted in transit?)"
        chown "$owner" "$sd/f" || die 1 "could not chown $adest to $owner (does the user exist on this node?)"
        chmod "$mode" "$sd/f"
        # "|" is outside the dest alphabet (a dest may hold ":").
        arts="$arts $name|$sd|$adest|$after"
        continue
        ;;
    *) die 1 "unexpected payload part $name" ;;
    esac
    head -c "$len" > "$dest" || die 1 "could not stage $name (disk full?)"
    [ "$(wc -c < "$dest")" -eq "$len" ] || die 1 "staging $name came out short (disk full or truncated upload)"
done
[ -z "$checked" ] && check_signed
IFS= read -r word || word=
[ "$word" = commit ] || die 3 "the operator did not confirm the bundle (it failed verification there, or the connection was cut); nothing was installed"
[ -z "$(head -c 1)" ] || die 1 "the upload has trailing bytes"

# Nothing the bundle carries is visible on the node until the renames; after the first rename,
# any failure (or signal) puts back everything this push had renamed, PKI and artifacts alike,
# so the node ends with the whole bundle or exactly what it had.
done_list=
bk=
had=
pki_new=
if [ "$action" != none ]; then
    for x in "$pki" "$pki/etcd"; do [ -d "$x" ] || pki_new="$x $pki_new"; done
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
fi
# What each artifact's dest holds now is kept beside it: a hard link (free, whatever the size),
# or a copy where the dest cannot be linked.
for a in $arts; do
    sd=${a#*|} sd=${sd%%|*} r=${a#*|*|} adest=${r%%|*}
    if [ -e "$adest" ] || [ -L "$adest" ]; then
        ln -P "$adest" "$sd/old" 2> /dev/null || cp -P -p "$adest" "$sd/old" ||
            die 1 "could not keep a copy of $adest to restore on failure (disk full?)"
    fi
done

adone=
# Runs at most once in effect: it empties its lists, since a failure calls it and then exits,
# and the exit trap would call it again. A restore that fails is named in $put_back.
put_back="every file this push had installed was put back"
rollback() { # (its own variable names: the caller's message still needs $adest)
    rb_failed=
    for ra in $adone; do
        rsd=${ra#*|} rsd=${rsd%%|*} rr=${ra#*|*|} rdest=${rr%%|*}
        if [ -e "$rsd/old" ] || [ -L "$rsd/old" ]; then
            mv -fT "$rsd/old" "$rdest" || rb_failed="$rb_failed $rdest"
        else
            rm -f "$rdest" || rb_failed="$rb_failed $rdest"
        fi
    done
    for rr in $done_list; do
        case " $had " in
        *" $rr "*) mv -f "$bk/$rr" "$pki/$rr" || rb_failed="$rb_failed $pki/$rr" ;;
        *) rm -f "$pki/$rr" || rb_failed="$rb_failed $pki/$rr" ;;
        esac
    done
    for rr in $pki_new; do rmdir "$rr" 2> /dev/null || :; done
    if [ -n "$rb_failed" ]; then
        put_back="putting back the previous files FAILED for:$rb_failed (the backup of the PKI is under $st/backup); check them by hand"
    elif [ -n "$bk" ]; then
        rm -rf "$bk"
        rmdir "$st/backup" 2> /dev/null || :
    fi
    adone= done_list= pki_new= renaming=
    return 0
}
renaming=1
if [ "$action" != none ]; then
    for p in $parts; do
        n=${p%%:*} rel=${n#pki/}
        # rename(2) replaces a symlink at the target itself; it never writes through it.
        if ! mv -f "$stage/b/$n" "$pki/$rel"; then
            rollback
            die 1 "could not install $pki/$rel; $put_back"
        fi
        done_list="$done_list $rel"
    done
    if ! (cd "$k" && grep ' pki/' "$stage/b/SHA256SUMS" | sha256sum -c --strict --quiet > /dev/null 2>&1); then
        rollback
        die 3 "the installed files do not match SHA256SUMS; $put_back"
    fi
fi
# Artifacts: each rename publishes a finished, verified file with its mode and owner.
for a in $arts; do
    sd=${a#*|} sd=${sd%%|*} r=${a#*|*|} adest=${r%%|*}
    if ! e=$(mv -fT "$sd/f" "$adest" 2>&1); then
        rollback
        die 1 "could not install $adest (${e##*: }); $put_back"
    fi
    adone="$adone $a"
done
# Everything is in place: the point of no return.
renaming= made_dirs=

if [ "$action" != none ]; then
    if [ "$action" != replace ] || [ -z "$had" ]; then
        rm -rf "$bk"
    fi
    rmdir "$st/backup" 2> /dev/null || true
    cp "$stage/b/bundle.json" "$st/.last-bundle.json.tmp" && mv -f "$st/.last-bundle.json.tmp" "$st/last-bundle.json"
    printf '%s\n' "$serial" > "$st/.last-serial.tmp" && mv -f "$st/.last-serial.tmp" "$st/last-serial"
    printf '%s serial=%s signer=%s action=%s\n' "$stamp" "$serial" "$principal" "$action" >> "$st/history"
    [ -n "$had" ] && [ "$action" = replace ] && printf 'backup %s\n' "$bk"
fi
actions=
for a in $arts; do
    name=${a%%|*} sd=${a#*|} sd=${sd%%|*} r=${a#*|*|} adest=${r%%|*} after=${r#*|}
    rm -rf "$sd"
    printf '%s serial=%s signer=%s artifact=%s dest=%s sha256=%s\n' "$stamp" "$serial" "$principal" \
        "$name" "$adest" "$(grep "  $name\$" "$stage/b/SHA256SUMS" | cut -c1-64)" >> "$st/history"
    printf 'artifact %s\n' "$adest"
    case $after in
    -) ;;
    import-images) actions="$actions import-images|$adest" ;;
    *) case " $actions " in *" $after "*) ;; *) actions="$actions $after" ;; esac ;;
    esac
done
astages=
# The post-install actions, from the fixed set only, in a fixed order.
run_after() { # name, command...
    n=$1
    shift
    command -v "$1" > /dev/null 2>&1 || die 78 "files installed, but the after action $n needs $1, which this node lacks"
    "$@" > /dev/null 2>&1 || die 78 "files installed, but the after action $n failed ($*)"
    printf '%s after=%s\n' "$stamp" "$n" >> "$st/history"
    printf 'after %s\n' "$n"
}
case " $actions " in *" daemon-reload "*) run_after daemon-reload systemctl daemon-reload ;; esac
for x in $actions; do
    case $x in import-images\|*) run_after import-images ctr -n k8s.io images import "${x#import-images|}" ;; esac
done
case " $actions " in *" restart-kubelet "*) run_after restart-kubelet systemctl restart kubelet ;; esac
printf 'installed\n'
