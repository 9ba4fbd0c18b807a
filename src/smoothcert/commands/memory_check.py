"""The memory step: make data-dependent (per-input σ/θ) certificates sound (:mod:`smoothcert.pipeline.memory`)."""

from __future__ import annotations

from smoothcert import config as config_mod
from smoothcert.commands._common import add_config
from smoothcert.engine.regions import ACTIONS
from smoothcert.pipeline.memory import memory_check

HELP = "memory-based certification: process certificates in idx order so data-dependent σ/θ stays sound"


def add_arguments(p):
    add_config(p)
    p.add_argument("--certified", required=True, help="merged certify.tsv of a per-input σ/θ method")
    p.add_argument("--theta", required=True, nargs="+", help="θ shard files from optimize-sigma (all shards)")
    p.add_argument("--data", required=True, help="prepared data folder (test images are the region centres)")
    p.add_argument("--out-table", required=True, help="final TSV: the table after the memory step")
    p.add_argument("--out-memory", required=True, help="recorded regions (.npz)")


def run(args):
    final, arrays = memory_check(
        config_mod.load(args.config), args.certified, args.theta, args.data, args.out_table, args.out_memory
    )
    counts = final["memory"].value_counts().to_dict()
    print(
        f"memory-check: {len(final)} inputs, {len(arrays['idx'])} regions recorded; "
        + ", ".join(f"{k} {int(counts.get(k, 0))}" for k in ACTIONS)
    )
