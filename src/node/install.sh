# hapki node install: stage, verify on the node, install by rename, verify again, record.
# Runs under a per-node lock (flock on $st/push.lock: the kernel drops it when its holder dies);
# every write before the final renames goes to a 0700 staging directory on the same filesystem
# as the pki directory, so a failure (disk full, lost connection, bad signature) leaves the
# installed files exactly as they were.
#
# The node is its own trust anchor: when it holds /etc/hapki/allowed_signers (root's, not
# group/other writable), the signature is checked against that file alone, and only its lines
# whose namespaces= lists hapki-bundle count. Every instruction it follows is checked against
# what the signer signed: each artifact's dest, mode, owner and after action must be the ones in
# the staged bundle.json (whose hash SHA256SUMS covers), and each PKI file gets kubeadm's mode.
#
# Artifacts (offline-installer files) are staged one by one, each in a 0700 directory next to
# its destination (same filesystem), after every directory from / down to each destination was
# found root-owned and not group/other writable (missing ones are created 0755 by root), and
# checked against the signed SHA256SUMS as they arrive; nothing is moved into place before the
# operator, who verifies the whole bundle while it streams, sends the word "commit" after the
# last byte. Anything else (a verification failure, a lost connection) removes every staged byte.
#
# $1 kubernetes dir   $2 state dir   $3 action (install|replace|none: leave the PKI alone)
# $4 signer principal (used only without a pinned trust file)
# $5 sha256 of the shared-file state the operator planned against (see shared_state)
# $6 bundle serial    $7 this push's id (time and random; names the backup and staging dirs)
# $8 flags: "-" or a comma list of "allow-downgrade" and "reissue-ca" (the bundle's ca.crt is a
#    same-key re-issue: kubeconfigs holding the old one get the new one in the same install)
# then per payload part: NAME LENGTH MODE — or, for artifacts, artifacts/NNNN LENGTH MODE DEST
# OWNER AFTER (AFTER "-" for none) — parts arrive concatenated on stdin, in order:
# allowed_signers, bundle.json, SHA256SUMS, SHA256SUMS.sig, pki/..., artifacts/...,
# then the line "commit".
# shellcheck disable=SC2154 # nl, sl and the EX_ codes: set by common.sh, which always runs first
set -eu
umask 077
k=$1 st=$2 action=$3 principal=$4 expect=$5 serial=$6 stamp=$7 flags=$8
shift 8
pki=$k/pki
pinned=/etc/hapki/allowed_signers
case $action in install | replace | none) ;; *) printf 'hapki: bad action\n' >&2; exit 1 ;; esac
case $principal$expect$serial$stamp in *[!A-Za-z0-9@._-]*) printf 'hapki: bad arguments\n' >&2; exit 1 ;; esac
case $serial in '' | *[!0-9]*) printf 'hapki: bad serial\n' >&2; exit 1 ;; esac
case ,$flags, in ,-, | ,allow-downgrade, | ,reissue-ca, | ,allow-downgrade,reissue-ca,) ;; *) printf 'hapki: bad flags\n' >&2; exit 1 ;; esac
stage=
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
    return 0
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

[ -L "$k" ] || [ -L "$pki" ] || [ -L "$pki/etcd" ] || [ -L "$st" ] || [ -L "$st/push.lock" ] &&
    die "$EX_UNSAFE_PATH" "$k, $pki, $pki/etcd, $st or $st/push.lock is a symlink: refusing to write through it"
{ [ -d "$k" ] && [ -d "$st" ]; } || mkdir -p "$k" "$st"
# Owner and mode of each path, one stat for all: "uid mode path" lines.
root_only() { # paths... -> fails naming the first that is not root's or is group/other writable
    [ $# -gt 0 ] || return 0
    ro=$(stat -c '%u %a %n' -- "$@") || { ro_bad="$1 (cannot stat)"; return 1; }
    while IFS=' ' read -r ou om on; do
        case ${om#"${om%??}"} in *[2367]*) ro_bad="$on is writable by group or others (mode $om)"; return 1 ;; esac
        [ "$ou" = 0 ] || { ro_bad="$on is owned by uid $ou, not root"; return 1; }
    done <<RO
$ro
RO
}
# Adds every existing directory from / down to $1 to $chain (a symlink is refused: its target's
# directories would be another chain); $2 names what the directory is on the way to.
add_chain() {
    sub=
    rest=${1#/}
    while [ -n "$rest" ]; do
        sub=$sub/${rest%%/*}
        case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
        [ -L "$sub" ] && die "$EX_UNSAFE_PATH" "$sub is a symlink on the way to $2; refusing this node: use the real path"
        [ -e "$sub" ] || break
        [ -d "$sub" ] || die 1 "$sub is not a directory (it is on the way to $2); move it away and push again"
        case " $chain " in *" $sub "*) ;; *) chain="$chain $sub" ;; esac
    done
}
# The PKI staging (private keys) and the state dir: root's alone all the way down, as for
# artifacts, or another user could swap the staging directory under root.
chain=/
add_chain "$k" "$k"
add_chain "$st" "$st"
# shellcheck disable=SC2086
root_only $chain ||
    die "$EX_UNSAFE_PATH" "$ro_bad: hapki writes keys as root only through directories that root alone can change; refusing this node (fix: chown root:root and chmod go-w that directory)"

# (root_only's one stat has its mode: chmod only when it is not 0700 already.)
case $nl$ro$nl in *"${nl}0 700 $st$nl"*) ;; *) chmod 0700 "$st" ;; esac
# The lock: flock(1) on a file in the root-only state dir. The kernel releases it when its
# holder dies, so a push that was cut off never leaves it held; fd 9 is closed for the after
# actions (a daemon they start must not inherit it).
command -v flock > /dev/null 2>&1 || die 1 "this node lacks flock(1) (util-linux), which hapki's lock needs"
exec 9>> "$st/push.lock"
flock -n 9 || die "$EX_LOCKED" "another hapki push holds the lock on this node ($st/push.lock); wait for it to end and push again"

# Serials only go up, whatever the bundle carries (PKI, artifacts or both).
older() { # a b: whether decimal serial a is smaller than b (any length)
    oa=${1#"${1%%[!0]*}"} ob=${2#"${2%%[!0]*}"}
    [ ${#oa} -ne ${#ob} ] && { [ ${#oa} -lt ${#ob} ]; return; }
    while [ -n "$oa" ]; do
        x=${oa%"${oa#?}"} y=${ob%"${ob#?}"}
        [ "$x" != "$y" ] && { [ "$x" -lt "$y" ]; return; }
        oa=${oa#?} ob=${ob#?}
    done
    return 1
}
last=
if [ -f "$st/last-serial" ]; then IFS= read -r last < "$st/last-serial" || :; fi
case $last in *[!0-9]*) last= ;; esac
downgrade=
if [ -n "$last" ] && older "$serial" "$last"; then
    case ,$flags, in *,allow-downgrade,*) ;; *) false ;; esac ||
        die 3 "bundle serial $serial is older than serial $last installed on this node (downgrade refused); push a newer bundle, or add --allow-downgrade if going back is deliberate"
    downgrade=1
fi

# This node's staging next to artifacts carries the node's name and this push's id: on a
# destination directory shared by several nodes (NFS) only this node's own, older staging
# (dead, since this node's lock is ours) is ever removed, never another node's live push.
hid=
IFS= read -r hid < /proc/sys/kernel/hostname 2> /dev/null || hid=
case $hid in '' | *[!A-Za-z0-9.-]*) hid=node ;; esac
sprefix=.hapki-stage_${hid}_

# Staging left by an interrupted push goes first; we hold the lock, so nobody else is staging.
for g in "$k"/.hapki-stage.*; do
    [ -d "$g" ] && rm -rf "$g"
done

shared_list "$pki"
got=$(describe "$sl" | sha256sum)
[ "${got%% *}" = "$expect" ] || die "$EX_CHANGED" "the shared files on this node changed while hapki was planning; run push again"

# Named by this push's id; $k is root's alone (checked above) and its old staging went just
# now, so nobody else can have made it: mkdir -p (0700 under umask 077) in one process.
sdir=$k/.hapki-stage.$stamp
{ [ ! -e "$sdir" ] && [ ! -L "$sdir" ]; } || die 1 "$sdir exists although this push just cleared the staging; push again"
stage=$sdir
mkdir -p "$stage/b/pki/etcd" || die 1 "could not create the staging directory under $k (disk full?)"
parts=
arts=
sizes='' total=0
# The trust file: the node's own pinned one when present (only its hapki-bundle lines), else the
# line the operator sent for the key it verified.
trust_file() { # -> $tf
    tf=$stage/allowed_signers
    [ ! -e "$pinned" ] && [ ! -L "$pinned" ] && return
    { [ -L "${pinned%/*}" ] || [ -L "$pinned" ] || [ ! -f "$pinned" ]; } &&
        die 3 "$pinned (or its directory) is not a regular file: fix it (hapki trust install) and push again"
    root_only "${pinned%/*}" "$pinned" ||
        die 3 "$ro_bad: the pinned trust file must be root's and not group/other writable (chown root:root; chmod 0644 $pinned, 0755 ${pinned%/*})"
    awk '/^[ \t]*(#|$)/ { next }
        $1 !~ /"/ && $2 ~ /(^|,)namespaces="[^" ]*"(,|$)/ {
            ns = $2; sub(/.*namespaces="/, "", ns); sub(/".*/, "", ns)
            n = split(ns, l, ","); for (i = 1; i <= n; i++) if (l[i] == "hapki-bundle") { print; next }
        }' "$pinned" > "$stage/pinned" || die 3 "could not read $pinned"
    [ -s "$stage/pinned" ] ||
        die 3 "$pinned has no line whose namespaces= lists hapki-bundle, so no key may sign bundles for this node; add namespaces=\"hapki-bundle\" to the signer's line"
    tf=$stage/pinned
}
# The signature and the small entries are checked before the first artifact byte is read, so a
# bad bundle costs no transfer.
check_signed() {
    trust_file
    if [ "$tf" = "$stage/pinned" ]; then
        p=$(cd "$stage/b" && ssh-keygen -Y find-principals -s SHA256SUMS.sig -f "$tf" 2> /dev/null) ||
            die 3 "the bundle is not signed by a key that $pinned trusts for hapki-bundle"
        principal=${p%%"$nl"*}
        principal=${principal%%,*}
    fi
    ssh-keygen -Y verify -f "$tf" -I "$principal" -n hapki-bundle \
        -s "$stage/b/SHA256SUMS.sig" < "$stage/b/SHA256SUMS" > /dev/null 2>&1 ||
        die 3 "the bundle signature does not verify on this node against $tf (ssh-keygen -Y verify failed)"
    n_list=bundle.json
    for p in $parts; do n_list="$n_list ${p%%:*}"; done
    # The shell picks the lines naming them (a 64-character hash of 0-9a-f, two spaces, the
    # name; no process); a name without one is refused.
    sums=
    while IFS= read -r l; do
        r=${l#????????????????????????????????????????????????????????????????}
        h=${l%"$r"}
        case $h in *[!0-9a-f]*) continue ;; esac
        [ ${#h} = 64 ] || continue
        case $r in "  "*) ;; *) continue ;; esac
        case " $n_list " in *" ${r#  } "*) sums="$sums$l$nl" ;; esac
    done < "$stage/b/SHA256SUMS" || :
    for n in $n_list; do
        case $nl$sums$nl in *"  $n$nl"*) ;; *) die 3 "$n is not covered by SHA256SUMS" ;; esac
    done
    printf '%s' "$sums" > "$stage/small.sums"
    (cd "$stage/b" && sha256sum -c --strict --quiet "$stage/small.sums" > /dev/null 2>&1) ||
        die 3 "a staged file does not match SHA256SUMS on this node (corrupted in transit?)"
}
# What the signed bundle.json says: "serial N", then one "name dest mode owner after" line per
# artifact. bundle.json is hapki's canonical pretty JSON; anything else yields no serial or no
# artifact line, so nothing matches and nothing is installed.
signed_meta() {
    awk 'function bad() { err = 1; exit 1 }
        s == 0 && /^  "serial": [0-9]+,$/ { if (serial != "") bad(); serial = $2; sub(/,/, "", serial); print "serial", serial; next }
        s == 0 && $0 == "  \"artifacts\": [" { if (seen++) bad(); s = 1; next }
        s == 1 && $0 == "    {" { s = 2; f["name"] = f["dest"] = f["mode"] = f["owner"] = ""; f["after"] = "-"; got = ""; next }
        s == 1 && ($0 == "  ]" || $0 == "  ],") { s = 0; next }
        s == 2 && ($0 == "    }" || $0 == "    },") {
            if (f["name"] == "" || f["dest"] == "" || f["mode"] == "" || f["owner"] == "") bad()
            print f["name"], f["dest"], f["mode"], f["owner"], f["after"]; s = 1; next
        }
        s == 2 && /^      "(name|dest|mode|owner|after)":/ {
            if ($0 !~ /^      "[a-z]+": "[A-Za-z0-9\/._+@:,=-]+",?$/) bad()
            key = $0; sub(/^      "/, "", key); sub(/".*/, "", key)
            v = $0; sub(/^      "[a-z]+": "/, "", v); sub(/",?$/, "", v)
            if (index(got, " " key " ")) bad()
            got = got " " key " "; f[key] = v; next
        }
        END { if (err || s != 0) exit 1 }' "$stage/b/bundle.json"
}
# Every artifact instruction must be the signed one, and every directory down to each dest
# root's alone; missing directories are then created (0755, root) before anything is staged.
check_artifacts() { # the artifact argument words
    signed=$nl$meta$nl
    dirs=
    while [ $# -gt 0 ]; do
        [ $# -ge 6 ] || die 1 "artifact part $1 lacks its length, mode, dest, owner and action"
        name=$1 len=$2 mode=$3 adest=$4 owner=$5 after=$6
        shift 6
        case $name in artifacts/[0-9][0-9][0-9][0-9]*) ;; *) die 1 "unexpected payload part $name" ;; esac
        case $name$len$mode in *..* | *[!A-Za-z0-9/._-]*) die 1 "bad payload part $name" ;; esac
        case $len$mode in *[!0-9]*) die 1 "bad payload part $name" ;; esac
        case $after in - | restart-kubelet | daemon-reload | import-images | pull-images) ;; *) die 1 "unknown after action $after" ;; esac
        case $adest in /*) ;; *) die 1 "artifact dest $adest is not absolute" ;; esac
        case $adest$owner in *[!A-Za-z0-9/._+@:,=-]*) die 1 "artifact dest $adest or owner $owner has a character outside hapki's alphabet" ;; esac
        case $signed in
        *"$nl$name $adest $mode $owner $after$nl"*) ;;
        *) die 3 "the operator asked to install $name at $adest (mode $mode, owner $owner, after $after), which the signed bundle.json does not say; nothing was installed" ;;
        esac
        want=$(grep "^[0-9a-f]\{64\}  $name\$" "$stage/b/SHA256SUMS") || die 3 "$name is not covered by SHA256SUMS"
        arts="$arts $name|${want%% *}|$len|$mode|$adest|$owner|$after"
        d=${adest%/*}
        case " $dirs " in *" $d "*) ;; *) dirs="$dirs $d" ;; esac
    done
    # Each directory from / down: existing ones are checked in one stat.
    chain=/
    for d in $dirs; do add_chain "$d" "an artifact dest"; done
    # shellcheck disable=SC2086
    root_only $chain ||
        die "$EX_UNSAFE_PATH" "$ro_bad: hapki installs artifacts as root only through directories that root alone can change; refusing this node (fix: chown root:root and chmod go-w that directory, or pick another dest)"
    for d in $dirs; do
        [ -d "$d" ] && continue
        # Remember the directories created here (outermost first), to remove them if the push
        # does not complete.
        top=$d new=
        while [ ! -e "$top" ] && [ ! -L "$top" ]; do new="$top $new" top=${top%/*}; done
        umask 022
        mkdir -p "$d" || die 1 "could not create $d"
        umask 077
        for x in $new; do made_dirs="$x $made_dirs"; done
    done
}
stage_artifact() { # name|sha256|len|mode|dest|owner|after
    r=$1
    name=${r%%|*} r=${r#*|} want=${r%%|*} r=${r#*|} len=${r%%|*} r=${r#*|} mode=${r%%|*} r=${r#*|}
    adest=${r%%|*} r=${r#*|} owner=${r%%|*} after=${r#*|}
    d=${adest%/*}
    [ -n "$d" ] || d=/
    [ -L "$adest" ] && [ -d "$adest" ] && die "$EX_UNSAFE_PATH" "$adest is a symlink to a directory: refusing to replace it"
    [ -d "$adest" ] && [ ! -L "$adest" ] && die 1 "$adest is a directory; move it away and push again"
    # This node's staging left by an interrupted push (not this push's own) goes first.
    for g in "$d/$sprefix"*; do
        [ -d "$g" ] || continue
        case $g in "$d/$sprefix$stamp".*) continue ;; esac
        rm -rf "$g"
    done
    sd=$(mktemp -d "$d/$sprefix$stamp.XXXXXX") || die 1 "could not stage in $d"
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
    # The staged file is reachable only through root's directories: owner and mode are set
    # on it there, never through a path anyone else could swap (-h: not through a link).
    chown -h "$owner" "$sd/f" || die 1 "could not chown $adest to $owner (does the user exist on this node?)"
    chmod "$mode" "$sd/f"
    # Images are imported from a root-only copy, never from the dest.
    case $after in import-images | pull-images) ln "$sd/f" "$sd/img" ;; esac
    # "|" is outside the dest alphabet (a dest may hold ":").
    astaged="$astaged $name|$sd|$adest|$after"
}
while [ $# -ge 3 ]; do
    name=$1 len=$2 mode=$3
    case $name in artifacts/*) break ;; esac
    shift 3
    case $name$len$mode in *..* | *[!A-Za-z0-9/._-]*) die 1 "bad payload part $name" ;; esac
    case $len$mode in *[!0-9]*) die 1 "bad payload part $name" ;; esac
    case $name in
    allowed_signers) dest=$stage/allowed_signers ;;
    bundle.json | SHA256SUMS | SHA256SUMS.sig) dest=$stage/b/$name ;;
    pki/*)
        case " $SHARED " in *" ${name#pki/} "*) ;; *) die 3 "$name is not one of kubeadm's shared files" ;; esac
        # kubeadm's fixed modes: certificates 0644, keys (sa.pub too) 0600.
        case $name in *.crt) m=0644 ;; *) m=0600 ;; esac
        [ "$mode" = "$m" ] || die 3 "the operator asked for mode $mode on $name; kubeadm's is $m; nothing was installed"
        dest=$stage/b/$name parts="$parts $name:$mode"
        ;;
    *) die 1 "unexpected payload part $name" ;;
    esac
    sizes="$sizes$len $dest$nl" total=$((total + len))
done
# The parts arrive back to back: one head reads them all (exactly their bytes: what follows on
# stdin is the artifacts' and the commit line's) into one awk, which cuts them at the announced
# lengths (binary-safe: awk keeps every byte, NUL included). The awk fails when stdin ends
# inside a part; every part's content is then checked by the signature and SHA256SUMS.
if [ -n "$sizes" ]; then
    prc=0
    head -c "$total" | HAPKI_PARTS=$sizes awk 'function next_part() {
            while (++i <= n) {
                rem = L[i]; sub(/ .*/, "", rem); rem += 0; out = L[i]; sub(/^[0-9]+ /, "", out)
                printf "" > out
                if (rem > 0) return
                close(out)
            }
            out = ""
        }
        BEGIN { n = split(ENVIRON["HAPKI_PARTS"], L, "\n"); if (L[n] == "") n--; next_part() }
        {
            s = $0 "\n"
            while (s != "" && out != "") {
                if (length(s) <= rem) { printf "%s", s > out; rem -= length(s); s = "" }
                else { printf "%s", substr(s, 1, rem) > out; s = substr(s, rem + 1); rem = 0 }
                if (rem == 0) { if (close(out)) { werr = 1; exit 2 }; next_part() }
            }
        }
        END { if (werr) exit 2; if (out != "") exit 3 }' || prc=$?
    # 3: stdin ended inside a part. A write error (disk full) is 2 (close() fails, or the awk
    # itself exits 2 on it); what was written is then checked by the signature and SHA256SUMS.
    case $prc in
    0) ;;
    3) die 1 "staging a part came out short (truncated upload)" ;;
    *) die 1 "could not stage the bundle's parts (disk full?)" ;;
    esac
fi
check_signed
# The serial the operator named (and the node checked against its last one) must be the
# signed one; a PKI install carries all eight shared files.
meta=$(signed_meta) || die 3 "the signed bundle.json is not in hapki's format; nothing was installed"
case $meta in
"serial $serial$nl"* | "serial $serial") ;;
*) die 3 "the operator named serial $serial, which is not the signed bundle.json's; nothing was installed" ;;
esac
if [ "$action" != none ]; then
    np=0
    for p in $parts; do np=$((np + 1)); done
    [ "$np" = 8 ] || die 3 "a PKI install needs all eight shared files; the operator sent $np; nothing was installed"
fi
astaged=
if [ $# -gt 0 ]; then
    check_artifacts "$@"
    for a in $arts; do stage_artifact "$a"; done
fi
arts=$astaged
IFS= read -r word || word=
[ "$word" = commit ] || die 3 "the operator did not confirm the bundle (it failed verification there, or the connection was cut); nothing was installed"
# Nothing may follow (read, a builtin, sees any byte but NUL; a NUL alone is harmless).
if IFS= read -r word || [ -n "$word" ]; then die 1 "the upload has trailing bytes"; fi

# Nothing the bundle carries is visible on the node until the renames; after the first rename,
# any failure (or signal) puts back everything this push had renamed, PKI and artifacts alike,
# so the node ends with the whole bundle or exactly what it had.
done_list=
bk=
had=
pki_new=
if [ "$action" != none ]; then
    for x in "$pki" "$pki/etcd"; do [ -d "$x" ] || pki_new="$x $pki_new"; done
    install -d -o 0 -g 0 -m 0755 "$pki" "$pki/etcd" || die 1 "could not create $pki/etcd"
    # Modes and owner are set on the staged copies, so each rename publishes a finished file;
    # the names are kubeadm's (checked above), so they split safely into one call each. Each
    # part's mode was checked to be kubeadm's: 0644 for certificates, 0600 for the rest, which
    # they already have (the awk created them under umask 077), so only certificates get chmod.
    names='' crts='' ptop='' psub=''
    for p in $parts; do
        n=${p%%:*} rel=${p%%:*} rel=${rel#pki/}
        names="$names $n"
        case ${p#*:} in 0644) crts="$crts $n" ;; esac
        case $rel in */*) psub="$psub $rel" ;; *) ptop="$ptop $rel" ;; esac
    done
    # shellcheck disable=SC2086
    (cd "$stage/b" && chown 0:0 $names && { [ -z "$crts" ] || chmod 0644 $crts; }) ||
        die 1 "could not set the staged files' owner and modes"
    # Keep whatever is there now, so a failed rename can be undone and --replace leaves a backup.
    # Each push its own, fresh backup directory (mktemp: unique whatever the push id says); no
    # later push ever deletes it. Nothing there yet: nothing to keep, no directory.
    had=
    for p in $parts; do
        n=${p%%:*} rel=${n#pki/}
        if [ -e "$pki/$rel" ] || [ -L "$pki/$rel" ]; then had="$had $rel"; fi
    done
    if [ -n "$had" ]; then
        mkdir -p "$st/backup"
        bk=$(mktemp -d "$st/backup/$stamp.XXXXXX") || die 1 "could not create a backup directory under $st/backup (disk full?)"
        # One cp for all of them (--parents: etcd/ca.key lands in $bk/etcd).
        # shellcheck disable=SC2086
        (cd "$pki" && cp -P -p --parents -- $had "$bk"/) || die 1 "could not back up the files in $pki (disk full?)"
    fi
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

# A same-key re-issue of ca.crt: every kubeconfig directly under $k whose
# certificate-authority-data is the old ca.crt is staged with the new one (only that value
# changes; owner and mode are the old file's), renamed in with the PKI and rolled back with it.
kc_list=
kc_done=
stage_kubeconfigs() {
    kold=$pki/ca.crt knew=$stage/b/pki/ca.crt
    { [ -f "$kold" ] && [ ! -L "$kold" ]; } || return 0
    command -v openssl > /dev/null 2>&1 || die 1 "this node lacks openssl, which confirming a same-key re-issue of ca.crt needs"
    { ka=$(openssl x509 -noout -subject -pubkey -in "$kold" 2> /dev/null) &&
        kb=$(openssl x509 -noout -subject -pubkey -in "$knew" 2> /dev/null) && [ "$ka" = "$kb" ]; } ||
        die 3 "the bundle's ca.crt is not a same-key re-issue of $kold (subject or public key differ); nothing was installed"
    ob=$(base64 -w0 < "$kold") nb=$(base64 -w0 < "$knew")
    [ "$ob" = "$nb" ] && return 0
    mkdir "$stage/kc" "$stage/kcold"
    found=$(grep -l -F -e "$ob" -- "$k"/*.conf 2> /dev/null) || found=
    while IFS= read -r c; do
        { [ -n "$c" ] && [ -f "$c" ] && [ ! -L "$c" ]; } || continue
        n=${c##*/}
        case $n in *[!A-Za-z0-9._-]*) continue ;; esac
        awk -v old="$ob" -v new="$nb" '{
                v = $0; sub(/^[ \t]*certificate-authority-data:[ \t]*/, "", v)
                if (v != $0 && v == old) { print substr($0, 1, length($0) - length(v)) new; hit = 1 } else print
            } END { exit !hit }' "$c" > "$stage/kc/$n" || { rm -f "$stage/kc/$n"; continue; }
        { om=$(stat -c '%u:%g %a' -- "$c") && chown "${om% *}" "$stage/kc/$n" && chmod "${om#* }" "$stage/kc/$n"; } ||
            die 1 "could not give the updated $c its owner and mode; nothing was installed"
        kc_list="$kc_list $n"
    done << KC
$found
KC
}
case ,$flags, in *,reissue-ca,*) [ "$action" = none ] || stage_kubeconfigs ;; esac

adone=
# Runs at most once in effect: it empties its lists, since a failure calls it and then exits,
# and the exit trap would call it again. A restore that fails is named in $put_back.
put_back="every file this push had installed was put back"
rollback() { # (its own variable names: the caller's message still needs $adest)
    rb_failed=
    for rk in $kc_done; do
        mv -f "$stage/kcold/$rk" "$k/$rk" || rb_failed="$rb_failed $k/$rk"
    done
    for ra in $adone; do
        rsd=${ra#*|} rsd=${rsd%%|*} rr=${ra#*|*|} rdest=${rr%%|*}
        if [ -e "$rsd/old" ] || [ -L "$rsd/old" ]; then
            mv -fT "$rsd/old" "$rdest" || rb_failed="$rb_failed $rdest"
        else
            rm -f "$rdest" || rb_failed="$rb_failed $rdest"
        fi
    done
    for rr in $done_list; do
        # Not renamed yet: its staged copy is still there.
        { [ -e "$stage/b/pki/$rr" ] || [ -L "$stage/b/pki/$rr" ]; } && continue
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
    adone='' done_list='' pki_new='' renaming='' kc_done=''
    return 0
}
renaming=1
if [ "$action" != none ]; then
    # Two renaming calls (the pki directory, then pki/etcd); each rename(2) replaces a symlink
    # at the target itself, never writing through it. Every part counts as done from here: the
    # rollback puts back only those whose staged copy is gone.
    done_list="$ptop $psub"
    # shellcheck disable=SC2086
    if ! (cd "$stage/b/pki" && { [ -z "$ptop" ] || mv -f -- $ptop "$pki"/; } &&
        { [ -z "$psub" ] || mv -f -- $psub "$pki/etcd"/; }); then
        rollback
        die 1 "could not install the files in $pki; $put_back"
    fi
    # The installed files, read again, against every pki line of SHA256SUMS (read by the shell).
    psums=
    while IFS= read -r l; do
        case $l in *" pki/"*) psums="$psums$l$nl" ;; esac
    done < "$stage/b/SHA256SUMS"
    if ! (cd "$k" && printf '%s' "$psums" | sha256sum -c --strict --quiet > /dev/null 2>&1); then
        rollback
        die 3 "the installed files do not match SHA256SUMS; $put_back"
    fi
    for n in $kc_list; do
        # The old one stays reachable (a hard link in the root-only staging) for the rollback.
        if ! { ln -P "$k/$n" "$stage/kcold/$n" && mv -f "$stage/kc/$n" "$k/$n"; }; then
            rollback
            die 1 "could not update $k/$n; $put_back"
        fi
        kc_done="$kc_done $n"
    done
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
renaming='' made_dirs=''

# Every install records its serial (PKI, artifacts or both): the next push checks it.
printf '%s\n' "$serial" > "$st/.last-serial.tmp" && mv -f "$st/.last-serial.tmp" "$st/last-serial"
[ -n "$downgrade" ] &&
    printf '%s downgrade from=%s to=%s signer=%s (--allow-downgrade)\n' "$stamp" "$last" "$serial" "$principal" >> "$st/history"
if [ "$action" != none ]; then
    if [ -n "$bk" ] && [ "$action" != replace ]; then
        rm -rf "$bk"
        rmdir "$st/backup" 2> /dev/null || true
    fi
    cp "$stage/b/bundle.json" "$st/.last-bundle.json.tmp" && mv -f "$st/.last-bundle.json.tmp" "$st/last-bundle.json"
    printf '%s serial=%s signer=%s action=%s\n' "$stamp" "$serial" "$principal" "$action" >> "$st/history"
    for n in $kc_done; do
        printf '%s kubeconfig=%s certificate-authority-data=re-issued ca.crt\n' "$stamp" "$k/$n" >> "$st/history"
        printf 'kubeconfig %s\n' "$k/$n"
    done
    if [ -n "$had" ] && [ "$action" = replace ]; then
        # Kept until pruned by hand (see the README): rm -rf it once it is no longer needed.
        printf '%s backup=%s\n' "$stamp" "$bk" >> "$st/history"
        printf 'backup %s\n' "$bk"
    fi
fi
# The staging directories (each holding the root-only copy of an image to import) go when
# the script exits.
actions=
for a in $arts; do
    name=${a%%|*} sd=${a#*|} sd=${sd%%|*} r=${a#*|*|} adest=${r%%|*} after=${r#*|}
    printf '%s serial=%s signer=%s artifact=%s dest=%s sha256=%s\n' "$stamp" "$serial" "$principal" \
        "$name" "$adest" "$(grep "  $name\$" "$stage/b/SHA256SUMS" | cut -c1-64)" >> "$st/history"
    printf 'artifact %s\n' "$adest"
    case $after in
    -) ;;
    import-images | pull-images) actions="$actions $after|$sd/img|$adest" ;;
    *) case " $actions " in *" $after "*) ;; *) actions="$actions $after" ;; esac ;;
    esac
done
# The post-install actions, from the fixed set only, in a fixed order.
run_after() { # name, command...
    n=$1
    shift
    command -v "$1" > /dev/null 2>&1 || die "$EX_AFTER_FAILED" "files installed, but the after action $n needs $1, which this node lacks"
    "$@" > /dev/null 2>&1 9>&- || die "$EX_AFTER_FAILED" "files installed, but the after action $n failed ($*)"
    printf '%s after=%s\n' "$stamp" "$n" >> "$st/history"
    printf 'after %s\n' "$n"
}
case " $actions " in *" daemon-reload "*) run_after daemon-reload systemctl daemon-reload ;; esac
# An image archive goes into containerd's k8s.io namespace from the root-only staged copy (never
# from the dest), each image under the digest the archive's index gives it. Only the node's own
# platform, named strictly: an archive that `ctr images export` wrote for one platform lists the
# others in its image index without their content, and containerd 1.6 then fails both
# --all-platforms and its default (which also matches linux/386 on amd64).
# Each image the import created is then labelled io.cri-containerd.pinned=pinned, which the CRI
# plugin of containerd >= 1.7 reports to the kubelet as pinned (spared by its image GC). A failed
# import fails the node, naming the archive and its images, and the history records it.
# What a failed import left under the archive's names is unusable (not all of its content is
# there): removed, so containerd never lists a broken image as if it were present.
drop_incomplete() { # names
    [ -n "$1" ] || return 0
    ctr -n k8s.io images check 2> /dev/null 9>&- | awk -v names=" $1 " \
        'NR > 1 && index(names, " " $1 " ") && / incomplete / { print $1 }' |
        while IFS= read -r n; do
            case $n in -* | *[!A-Za-z0-9._/:@-]*) continue ;; esac
            ctr -n k8s.io images rm "$n" > /dev/null 2>&1 9>&- || :
        done
}
node_platform() { # -> $pf
    case $(uname -m) in
    x86_64) pf=linux/amd64 ;;
    aarch64 | arm64) pf=linux/arm64 ;;
    armv7l) pf=linux/arm/v7 ;;
    *) pf=linux/$(uname -m) ;;
    esac
}
import_images() { # staged copy, dest
    command -v ctr > /dev/null 2>&1 ||
        die "$EX_AFTER_FAILED" "files installed, but importing $2 needs ctr (containerd), which this node lacks"
    names=$(tar -xOf "$1" --occurrence=1 index.json 2> /dev/null | grep -o '"io.containerd.image.name":"[^"]*"' |
        cut -d'"' -f4 | tr -cd 'A-Za-z0-9._/:@\n-' | tr '\n' ' ')
    names=${names% }
    node_platform
    if ! io=$(ctr -n k8s.io images import --platform "$pf" "$1" 2>&1 9>&-); then
        io=$(printf '%s' "$io" | tail -n 1 | tr -cd '[:print:]' | cut -c1-300)
        printf '%s after=import-images FAILED dest=%s images=%s\n' "$stamp" "$2" "$(printf '%s' "${names:--}" | tr ' ' ,)" >> "$st/history"
        drop_incomplete "$names"
        die "$EX_AFTER_FAILED" "files installed, but containerd could not import $2 (images: ${names:-none named}): $io"
    fi
    got=$(printf '%s\n' "$io" | sed -n 's/^unpacking \([^ ]*\) (sha256:[0-9a-f]*)\.\.\..*$/\1/p' | tr '\n' ' ')
    got=${got% }
    [ -n "$got" ] || die "$EX_AFTER_FAILED" "files installed, but importing $2 created no named image (the archive's index.json names none)"
    case " $got" in *" -"* | *[!A-Za-z0-9._/:@\ -]*) die "$EX_AFTER_FAILED" "importing $2 created an image named outside hapki's alphabet" ;; esac
    for n in $got; do
        ctr -n k8s.io images label "$n" io.cri-containerd.pinned=pinned > /dev/null 2>&1 9>&- ||
            die "$EX_AFTER_FAILED" "files installed and $n imported, but labelling it pinned failed"
    done
    printf '%s after=import-images dest=%s images=%s pinned\n' "$stamp" "$2" "$(printf '%s' "$got" | tr ' ' ,)" >> "$st/history"
    printf 'after import-images %s\n' "$got"
}
# A pull index (hapki bundle --registry) names each image with the reference it is pulled by,
# REGISTRY/REPO@DIGEST, one descriptor a line: pulled by digest (containerd refuses bytes whose
# digest differs, whatever the registry serves) through the signed certs.d just installed,
# tagged with the image's name, and pinned as an imported one.
pull_images() { # staged copy, dest
    command -v ctr > /dev/null 2>&1 ||
        die "$EX_AFTER_FAILED" "files installed, but pulling the images of $2 needs ctr (containerd), which this node lacks"
    refs=$(tar -xOf "$1" --occurrence=1 index.json 2> /dev/null | sed -n \
        's/^{"mediaType":"[^"]*","digest":"\(sha256:[0-9a-f]\{64\}\)","size":[0-9]*,"annotations":{"io.containerd.image.name":"\([A-Za-z0-9._/:-]*\)","org.hapki.pull":"\([A-Za-z0-9._/:-]*@sha256:[0-9a-f]\{64\}\)"}},\{0,1\}$/\1 \2 \3/p')
    [ -n "$refs" ] || die "$EX_AFTER_FAILED" "files installed, but $2 names no image to pull (not a hapki pull index)"
    node_platform
    got=
    while read -r dg n ref; do
        case $n$ref in -* | *" "*) die "$EX_AFTER_FAILED" "$2 names an image outside hapki's alphabet" ;; esac
        [ "${ref##*@}" = "$dg" ] || die "$EX_AFTER_FAILED" "$2: the pull reference of $n is not its digest"
        if ! io=$(ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d --platform "$pf" "$ref" 2>&1 9>&- < /dev/null); then
            io=$(printf '%s' "$io" | tail -n 1 | tr -cd '[:print:]')
            case $io in
            *"unexpected commit digest"*) why="the registry served other bytes than the signed digest, refused" ;;
            *"not found"*) why="the registry does not hold it (hapki push --registry copies it there)" ;;
            *) why="see containerd's message" ;;
            esac
            printf '%s after=pull-images FAILED dest=%s image=%s ref=%s\n' "$stamp" "$2" "$n" "$ref" >> "$st/history"
            die "$EX_AFTER_FAILED" "files installed, but pulling $n ($ref) failed: $why: $(printf '%s' "$io" | cut -c1-240)"
        fi
        { ctr -n k8s.io images tag --force "$ref" "$n" && ctr -n k8s.io images label "$n" io.cri-containerd.pinned=pinned &&
            ctr -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned; } > /dev/null 2>&1 9>&- < /dev/null ||
            die "$EX_AFTER_FAILED" "files installed and $ref pulled, but naming it $n and pinning it failed"
        got="$got,$n"
    done << REFS
$refs
REFS
    printf '%s after=pull-images dest=%s images=%s pinned\n' "$stamp" "$2" "${got#,}" >> "$st/history"
    printf 'after pull-images %s\n' "$(printf '%s' "${got#,}" | tr , ' ')"
}
for x in $actions; do
    r=${x#*|}
    case $x in
    import-images\|*) import_images "${r%%|*}" "${r#*|}" ;;
    pull-images\|*) pull_images "${r%%|*}" "${r#*|}" ;;
    esac
done
case " $actions " in *" restart-kubelet "*) run_after restart-kubelet systemctl restart kubelet ;; esac
printf 'installed\n'
