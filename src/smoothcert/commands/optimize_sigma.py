"""The per-input σ / θ search stage (one shard) of a per-input-σ method (:mod:`smoothcert.pipeline.optimize`).

Writes ``{idx, theta, time, evals}`` atomically, the θ file ``certify --theta`` reads. A method that starts
from another's θ (``init_from``) gets that θ file with ``--init``; its ``time`` and ``evals`` then include
those of the file it started from, so they are the whole cost of obtaining θ.
"""

import numpy as np
import torch

from smoothcert import config as config_mod
from smoothcert import methods
from smoothcert.artifacts import check_writable
from smoothcert.commands._common import add_shard_job, setup, shard_inputs
from smoothcert.commands._model import load_base_model
from smoothcert.errors import require
from smoothcert.pipeline.certify import load_theta
from smoothcert.pipeline.optimize import optimize_shard
from smoothcert.shards import write_theta

HELP = "search per-input noise (σ or θ) for one shard with a per-input-σ method"


def add_arguments(p):
    add_shard_job(p)
    searched = [m for m in methods.registry().values() if m.per_input_sigma]
    p.add_argument(
        "--method",
        required=True,
        choices=[m.name for m in searched],
        help="; ".join(f"{m.name}: {m.summary}" for m in searched),
    )
    p.add_argument(
        "--init",
        default=None,
        help="for a method that starts from another's θ ("
        + ", ".join(f"{m.name}: {m.init_from}" for m in searched if m.init_from)
        + "): that θ file of the same shard",
    )
    p.add_argument("--out", required=True, help="θ file to write (.pt)")


def run(args):
    cfg, device = setup(args)
    spec = config_mod.model_spec(cfg, args.model)
    check_writable(args.out)
    x, _, idx = shard_inputs(cfg, args)
    method = methods.get(args.method)
    init, start = None, method.init_from
    if start is not None:
        require(args.init is not None, f"method {args.method} needs --init, the {start} θ file of the same shard")
        init = load_theta(args.init, idx, int(np.prod(x.shape[1:])))
    else:
        require(args.init is None, f"--init is only for a method that starts from another's θ, not {args.method}")
    model = load_base_model(cfg, spec, args.checkpoint, x, args.data, device)
    out = optimize_shard(
        cfg,
        spec,
        method,
        model,
        x[idx],
        idx,
        device,
        init=None if init is None else init[0],
        progress=not args.no_progress,
    )
    if init is not None:
        out["time"] += torch.from_numpy(np.asarray(init[1], dtype=np.float64))
        out["evals"] += torch.from_numpy(np.asarray(init[2], dtype=np.int64))
    write_theta(args.out, out["idx"], out["theta"], out["time"], out["evals"])
