# hapki: read the eight shared files from a node (for `hapki bundle --from`). Each file is sent
# as a header line "F NAME MODE SIZE" followed by exactly SIZE bytes; a missing or non-regular
# file as "M NAME". Runs over SSH, so key material travels only inside the encrypted channel.
# $1 = pki dir
set -eu
pki=$1
for n in $SHARED; do
    f=$pki/$n
    if [ -f "$f" ] && [ ! -L "$f" ]; then
        printf 'F %s %s %s\n' "$n" "$(stat -c %a "$f")" "$(wc -c < "$f")"
        cat "$f"
    else
        printf 'M %s\n' "$n"
    fi
done
