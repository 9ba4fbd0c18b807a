"""The per-input σ / θ optimization stage (one shard): DDRS, then ANCER from the DDRS θ.

Writes ``{idx, theta, time, evals}`` atomically, the θ file ``certify --theta`` reads.
An ancer file's ``time`` and ``evals`` include those of the ddrs file it started
from, so they are the whole cost of obtaining θ.
"""
import numpy as np
import torch

from smoothcert import config as config_mod
from smoothcert.pipeline.certify import load_theta
from smoothcert.commands._common import add_config, add_model_inputs, add_progress, add_shard, add_threads, setup, shard_inputs
from smoothcert.errors import require
from smoothcert.io import check_writable, save_torch
from smoothcert.optimize import METHODS, optimize_shard
from smoothcert.training.loop import load_model

HELP = "optimize per-input noise for one shard: isotropic σ (ddrs) or anisotropic θ from the ddrs θ (ancer)"


def add_arguments(p):
    add_config(p)
    add_threads(p)
    add_progress(p)
    add_shard(p)
    add_model_inputs(p)
    p.add_argument("--method", required=True, choices=METHODS, help="ddrs (isotropic σ) or ancer (anisotropic θ)")
    p.add_argument("--init", default=None, help="ancer only: the ddrs θ file of the same shard (starting point)")
    p.add_argument("--out", required=True, help="θ file to write (.pt)")


def run(args):
    cfg, device = setup(args)
    spec = config_mod.model_spec(cfg, args.model)
    check_writable(args.out)
    x, _, idx = shard_inputs(cfg, args)
    init = None
    if args.method == "ancer":
        require(args.init is not None, "method ancer needs --init, the ddrs θ file of the same shard")
        init = load_theta(args.init, idx, int(np.prod(x.shape[1:])))
    else:
        require(args.init is None, "--init is only for method ancer")
    model = load_model(cfg, args.checkpoint, device)
    out = optimize_shard(cfg, spec, args.method, model, x[idx], idx, device,
                         init=None if init is None else init[0], progress=not args.no_progress)
    if init is not None:
        out["time"] += torch.from_numpy(np.asarray(init[1], dtype=np.float64))
        out["evals"] += torch.from_numpy(np.asarray(init[2], dtype=np.int64))
    save_torch(args.out, out)
