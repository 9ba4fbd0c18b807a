"""Check a config against the schema and list the experiments it defines."""

from smoothcert import config as config_mod
from smoothcert.commands._common import add_config

HELP = "validate the config (params.yaml) and list its models and experiments"


def add_arguments(p):
    add_config(p)


def run(args):
    cfg = config_mod.load(args.config)
    for model_id, method in config_mod.experiments(cfg):
        print(f"{model_id}\t{method}")
