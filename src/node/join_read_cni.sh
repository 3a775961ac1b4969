# hapki join --copy-cni-config: the first master's CNI config files, one line each (name, base64).
set -u
for f in /etc/cni/net.d/*; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then
        printf 'F %s %s\n' "${f##*/}" "$(head -c 65536 "$f" | base64 -w0)"
    fi
done
