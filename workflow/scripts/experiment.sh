#!/usr/bin/env bash
# One experiment config end to end, in its own folder (runs/<name>/, or $RUNS/<name>/), resumable:
#   workflow/scripts/experiment.sh config/mnist5k.yaml [config/quick.yaml ...]
# The config becomes the folder's params.yaml; each further file is merged over it (Snakemake --configfile) and
# named in the folder. Then the HTML report; with PUBLISH=1, the results page (report/page.md and its figures) is
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
cp "$config" "$dir/params.yaml"
cd "$dir"
echo "experiment: $dir" >&2
snakemake --snakefile "$repo/Snakefile" --profile "$repo/workflow/profiles/local" "${extra[@]}"
snakemake --snakefile "$repo/Snakefile" --profile "$repo/workflow/profiles/local" "${extra[@]}" --report report.html
if [ "${PUBLISH:-0}" = 1 ]; then
  dataset=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["dataset"])' params.yaml)
  smoothcert publish --report report --out "$repo/docs/results/$dataset.md"
fi
