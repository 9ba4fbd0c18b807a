"""Check a config (params.yaml, with any overrides merged as Snakemake merges them) and list its experiments."""

from smoothcert import config as config_mod
from smoothcert.commands._common import add_config

HELP = "validate the config (params.yaml + --configfile overrides, merged as Snakemake does); list its experiments"


def add_arguments(p):
    add_config(p)
    p.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="override files merged over the config in order, as `snakemake --configfile` merges them "
        "(mappings key by key, other values replaced)",
    )


def run(args):
    cfg = config_mod.load(args.config, tuple(args.configfile))
    for model_id, method in config_mod.experiments(cfg):
        print(f"{model_id}\t{method}")
