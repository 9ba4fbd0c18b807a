# smoothcert — thin top-level Snakefile. The experiment grid comes from params.yaml
# through smoothcert.config; each stage lives in workflow/rules/<stage>.smk and calls the CLI.
import os
import sys
from pathlib import Path

from smoothcert import config as sc_config
from smoothcert.errors import SmoothcertError
from smoothcert.methods import registry

METHODS = registry()  # the method registry: what each method needs from the workflow


configfile: "params.yaml"


# report.html's front page: the results' headline, claims and first figure (report/front.rst, from the report rule),
# or, before that rule has run, a line saying so (docutils cannot include a file that is not there)
report: "workflow/report/workflow.rst" if os.path.exists("report/front.rst") else "workflow/report/pending.rst"


try:
    for path in workflow.configfiles:  # Snakemake's own YAML reader lets a duplicate key win silently
        sc_config.read_yaml(path)
    sc_config.validate(config, "config")
    if any(spec.pretrained for spec in sc_config.model_specs(config)):  # model files vs the data, before any job
        from smoothcert.training.model_check import check_config

        check_config(config, ".smoothcert")
except SmoothcertError as exc:
    sys.stderr.write(f"smoothcert: invalid configuration: {exc}\n")
    sys.exit(2)

DATASET = config["data"]["dataset"]
DATA = f"data/prepared/{DATASET}"
MODELS = f"models/{DATASET}"
RESULTS = f"results/{DATASET}"
REPORT = "report"
METRICS = "metrics"
SHARDS = sc_config.shard_names(config)
EXPERIMENTS = sc_config.experiments(config)
# The CLI reads the merged, validated config (params.yaml plus any --configfile/--config
# overrides) from a content-addressed copy, so every job sees exactly what Snakemake saw.
# It reaches every job through the environment (locally and in each cluster job, which parses this file
# again), so that no rule's params depend on the whole config: a job reruns only when what it reads changes.
os.environ.update(SMOOTHCERT_CONFIG=sc_config.freeze(config, ".smoothcert"))


localrules:
    gather,
    report,
    report_all,
    data_all,
    train_all,
    certify_all,
    all,


wildcard_constraints:
    model=r"[a-z]+-[a-z0-9_]+-l[12]-[0-9.e+-]+",
    method=r"[a-z_]+",
    shard=r"\d+-of-\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/optimize.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/memory.smk"
include: "workflow/rules/video.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,


rule report_all:
    input:
        rules.report.output,
