# The operator's decision, one line on stdin. Its words are data, never evaluated: globbing is
# off, and the install part below checks each of them before use.
set -f
k=$1 st=$2
IFS= read -r decision || exit 0
case $decision in
skip) exit 0 ;;
install\ * | replace\ * | none\ *) ;;
*) printf 'hapki: unexpected decision from the operator\n' >&2; exit 1 ;;
esac
# shellcheck disable=SC2086
set -- "$k" "$st" $decision
set +f
