#!/usr/bin/env bash
# One experiment config end to end, in its own folder (runs/<name>/, or $RUNS/<name>/), resumable:
#   workflow/scripts/experiment.sh config/mnist5k.yaml [config/quick.yaml ...]
# The config is an override of params.yaml: merged over it, it becomes the folder's params.yaml; each further file
# is merged over that (Snakemake --configfile) and named in the folder. Then the HTML report; with PUBLISH=1, the results page (report/page.md and its figures) is
# copied to docs/results/<dataset>.md. Needs smoothcert and snakemake on PATH (make experiment sets it).
set -euo pipefail
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: $0 CONFIG.yaml [OVERRIDE.yaml ...]" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
config=$(realpath "$1"); shift
name=$(basename "${config%.yaml}")
extra=()
for override in "$@"; do
  [ -f "$override" ] || { echo "$0: $override not found" >&2; exit 2; }
  extra+=(--configfile "$(realpath "$override")")
  name="$name-$(basename "${override%.yaml}")"
done
dir="${RUNS:-$repo/runs}/$name"
mkdir -p "$dir"
# the run's params.yaml: the repository's params.yaml with the experiment config merged over it (a config holds
# only what differs), validated; written whole, so that the folder is a complete, resumable project
python - "$repo/params.yaml" "$config" > "$dir/params.yaml.tmp" <<'PY'
import sys

import yaml

from smoothcert import config

print(f"# params.yaml + {sys.argv[2].rsplit('/', 1)[-1]}, merged (written by experiment.sh)")
print(yaml.safe_dump(config.load(sys.argv[1], (sys.argv[2],)), sort_keys=False), end="")
PY
mv "$dir/params.yaml.tmp" "$dir/params.yaml"
cd "$dir"
echo "experiment: $dir" >&2
snakemake --snakefile "$repo/Snakefile" --profile "$repo/workflow/profiles/local" "${extra[@]}"
snakemake --snakefile "$repo/Snakefile" --profile "$repo/workflow/profiles/local" "${extra[@]}" --report report.html
if [ "${PUBLISH:-0}" = 1 ]; then
  dataset=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["dataset"])' params.yaml)
  smoothcert publish --report report --out "$repo/docs/results/$dataset.md"
fi
