"""The download / preparation stage."""

import json

from smoothcert import data
from smoothcert.commands._common import add_config, setup

HELP = "download (where allowed) and prepare the configured dataset into OUT/{train,test}.pt"


def add_arguments(p):
    add_config(p)
    p.add_argument("--out", required=True, help="output folder, e.g. data/prepared/digits")


def run(args):
    cfg, _ = setup(args, device=False)  # no GPU needed: none taken
    summary = data.prepare({**cfg["data"], "seed": cfg["seed"]}, args.out)
    print(json.dumps(summary))
