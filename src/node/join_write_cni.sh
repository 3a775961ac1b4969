# hapki join --copy-cni-config: $1 file name; its content on stdin, installed atomically.
set -eu
name=$1
mkdir -p /etc/cni/net.d
tmp=$(mktemp /etc/cni/net.d/.hapki.XXXXXX)
cat > "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "/etc/cni/net.d/$name"
