# hapki trust install: pin the node's own allowed_signers (stdin) at /etc/hapki/allowed_signers,
# root's, 0644, in a 0755 root directory, replaced by rename (never written through a link).
set -eu
umask 022
d=/etc/hapki
f=$d/allowed_signers
[ -L "$d" ] && { printf 'hapki: %s is a symlink; replace it with a real directory\n' "$d" >&2; exit "$EX_UNSAFE_PATH"; }
mkdir -p "$d"
chown 0:0 "$d"
chmod 0755 "$d"
t=$(mktemp "$d/.allowed_signers.XXXXXX")
trap 'rm -f "$t"' EXIT
cat > "$t"
chown 0:0 "$t"
chmod 0644 "$t"
mv -f "$t" "$f"
trap - EXIT
printf 'installed %s\n' "$f"
