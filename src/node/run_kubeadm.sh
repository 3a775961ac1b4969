# hapki: run kubeadm on the node with the arguments given (token create, token delete).
exec kubeadm "$@"
