#!/usr/bin/env bash
# One experiment config end to end, in its own folder (runs/<name>/, or $RUNS/<name>/), resumable:
#   workflow/scripts/experiment.sh config/mnist5k.yaml [config/quick.yaml ...]
# The config is an override of params.yaml: merged over it, it becomes the folder's params.yaml; each further file
# is merged over that (Snakemake --configfile) and named in the folder. Then the HTML report; with PUBLISH=1, the results page (report/page.md and its figures) is
# copied to docs/results/<dataset>.md. Needs smoothcert and snakemake on PATH (make experiment sets it).
# CAP=config/cap/<name>.yaml: the σ cap's rerun, after the uncapped run (the same command without CAP) has finished.
# In <run>-cap/ it reruns only the experiments the cap file lists, with its <method>.sigma_max, from copies of the
# uncapped run's prepared data and trained models (the uncapped folder is only read), then writes the uncapped run's
# report with those experiments beside their uncapped twins (smoothcert report --capped) to <run>-cap/report/.
set -euo pipefail
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: [CAP=CAP.yaml] $0 CONFIG.yaml [OVERRIDE.yaml ...]" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
config=$(realpath "$1"); shift
name=$(basename "${config%.yaml}")
extra=()
overrides=()
for override in "$@"; do
  [ -f "$override" ] || { echo "$0: $override not found" >&2; exit 2; }
  overrides+=("$(realpath "$override")")
  name="$name-$(basename "${override%.yaml}")"
done
# one --configfile with every override (nargs="+": a repeated --configfile keeps only the last one)
[ ${#overrides[@]} -eq 0 ] || extra=(--configfile "${overrides[@]}")
dir="${RUNS:-$repo/runs}/$name"
publish() {  # the results page of report/ to docs/results/<dataset>.md (PUBLISH=1)
  if [ "${PUBLISH:-0}" = 1 ]; then
    dataset=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["dataset"])' params.yaml)
    smoothcert publish --report report --out "$repo/docs/results/$dataset.md"
  fi
}
if [ -n "${CAP:-}" ]; then
  [ -f "$CAP" ] || { echo "$0: CAP=$CAP not found" >&2; exit 2; }
  base=$dir
  dir="$base-cap"
  [ -f "$base/params.yaml" ] || { echo "$0: no uncapped run in $base: run it first (the same command without CAP)" >&2; exit 2; }
  mkdir -p "$dir"
  # checks that the uncapped run ran this config, writes the capped config (params.yaml) and the uncapped one
  # (uncapped.yaml), copies the data and models the capped experiments read (mtimes kept: nothing is retrained)
  python - "$repo/params.yaml" "$config" "$(realpath "$CAP")" "$base" "$dir" "${overrides[@]}" <<'PY'
import sys

from smoothcert.errors import SmoothcertError
from smoothcert.reporting.cap import prepare

try:
    prepare(*sys.argv[1:])
except SmoothcertError as exc:
    print(f"experiment.sh: {exc}", file=sys.stderr)
    sys.exit(2)
PY
  cd "$dir"
  echo "capped experiments: $dir (uncapped: $base)" >&2
  snakemake certify_all --snakefile "$repo/Snakefile" --profile "$repo/workflow/profiles/local"
  dataset=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["dataset"])' params.yaml)
  video=()
  [ -d "$base/results/$dataset/video" ] && video=(--video "$base/results/$dataset/video")
  smoothcert report --config uncapped.yaml --results "$base/results/$dataset" --models "$base/models/$dataset" \
    --data "$base/data/prepared/$dataset" "${video[@]}" --capped . --out report --metrics metrics
  publish
  exit 0
fi
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
publish
