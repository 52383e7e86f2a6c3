#!/usr/bin/env bash
# Remove generated files from this repository, safely.
#
# Only paths inside the repository that holds this script are touched; symbolic links are
# removed as links and never followed; .venv/, data/ and .git/ are never entered.
#
# There is deliberately no python/torch here: emptying the CUDA cache or resetting peak-memory
# counters from a new process frees nothing that another process holds. GPU memory is returned
# when the training process ends its stage scope or exits.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./clean.sh [--dry-run] [--runs [--yes]]

Removes generated files inside this repository:
  __pycache__/ directories, *.pyc files, .pytest_cache/, .ruff_cache/, .smoke/ (smoke-run output)

Options:
  --runs      also remove run directories (runs/): trained checkpoints and results.
              Asks for confirmation on a terminal.
  --yes       confirm --runs without asking (needed when not on a terminal)
  --dry-run   list what would be removed; remove nothing
  -h, --help  show this help

Never touches .venv/, data/ or .git/, and never follows symbolic links.
EOF
}

die() {
    echo "clean.sh: error: $*" >&2
    exit 2
}

runs=0
yes=0
dry_run=0
for arg in "$@"; do
    case "$arg" in
        --runs) runs=1 ;;
        --yes | -y) yes=1 ;;
        --dry-run | -n) dry_run=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "clean.sh: error: unknown option: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

# The repository root is where this script lives (its physical path, symlinks resolved).
root="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
[[ -f "$root/validate_project.py" ]] || die "$root does not look like the kd-pipeline root (no validate_project.py); refusing"
cd -- "$root"

targets=()
# find -P (the default) does not follow symlinks; -prune keeps it out of protected folders.
while IFS= read -r -d '' path; do
    targets+=("$path")
done < <(find . \
    \( -path ./.git -o -path ./.venv -o -path ./data -o -path ./runs -o -name .venv \) -prune -o \
    \( -type d \( -name __pycache__ -o -name .pytest_cache -o -name .ruff_cache \) -print0 -prune \) -o \
    \( -type f -name '*.pyc' -print0 \))
if [[ -e .smoke || -L .smoke ]]; then
    targets+=("./.smoke")
fi

if (( runs )) && [[ -e runs || -L runs ]]; then
    if (( ! dry_run && ! yes )); then
        [[ -t 0 ]] || die "--runs deletes trained runs; without a terminal to confirm on, pass --yes"
        read -r -p "Delete every run directory under $root/runs? [y/N] " answer
        [[ "$answer" == [yY] || "$answer" == [yY][eE][sS] ]] || { echo "Kept runs/."; runs=0; }
    fi
    (( runs )) && targets+=("./runs")
fi

if (( ${#targets[@]} == 0 )); then
    echo "Nothing to clean."
    exit 0
fi

for path in "${targets[@]}"; do
    shown="${path#./}"
    [[ -L "$path" ]] && shown="$shown (symlink: the link only)"
    if (( dry_run )); then
        echo "would remove $shown"
    else
        # rm never follows a symlink operand or symlinks inside a removed folder
        rm -rf -- "$path"
        echo "removed $shown"
    fi
done
