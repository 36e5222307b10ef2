#!/usr/bin/env bash
# Mutation-test one module with mutmut, against the smallest test selection that exercises it.
#
#   scripts/mutation.sh verifier/values.py tests/verifier/test_values.py tests/verifier/test_values_boundaries.py
#
# MUTATION_MUTANTS (space-separated mutmut names, `*` allowed, e.g. 'coordinator.app.x_add_middleware*')
# limits the run to the mutants of those functions, for a module whose tests are slow.
#
# mutmut reads its settings from setup.cfg or pyproject.toml in the directory it runs in, and it
# writes a mutants/ tree there. Both would collide with other work in this checkout, so the run happens
# in a scratch copy of the working tree (tracked and untracked, ignored files left out) with its own
# setup.cfg ($MUTATION_DIR, default /tmp/flywheel-mutation/<module>). Every run starts from fresh
# mutants: mutmut keeps a surviving mutant's verdict while its function is unchanged, even after
# new tests that kill it. `mutmut results` and `mutmut show <name>` work inside that directory
# afterwards. Needs `pip install mutmut` (3.x).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 <module.py> <test path or node id>..." >&2
    exit 2
fi
module=$1
shift
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
scratch=${MUTATION_DIR:-/tmp/flywheel-mutation/$(echo "$module" | tr '/.' '__')}
package=${module%%/*}

mkdir -p "$scratch"
rm -rf "$scratch/mutants"
(cd "$repo" && git ls-files -co --exclude-standard -z) |
    rsync -a --from0 --files-from=- "$repo/" "$scratch/"

{
    echo "[mutmut]"
    echo "source_paths = $package"
    echo "only_mutate = $module"
    # Fork each mutant's run from a process that has imported the tests but run none: forking from
    # the process that collected coverage would hand every mutant warm caches (functools.lru_cache
    # on verifier.math.exact_value) and live verifier pools, so mutated code behind a cache hit
    # would never run and survive for no reason.
    echo "process_isolation = forkserver"
    echo "pytest_add_cli_args_test_selection ="
    for selection in "$@"; do echo "    $selection"; done
    # Each test run gets -p no:cacheprovider so the scratch copy never grows a pytest cache.
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    no:cacheprovider"
} >"$scratch/setup.cfg"

cd "$scratch"
# One child per core at low priority: the machine is shared.
read -ra mutants <<<"${MUTATION_MUTANTS:-}"
nice -n 10 python -m mutmut run --max-children "${MUTATION_CHILDREN:-2}" "${mutants[@]}"
python -m mutmut results | sed "s/^/survivor: /"
python -m mutmut results --all true | awk '{print $NF}' | sort | uniq -c
