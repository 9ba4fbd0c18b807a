"""The certification stage (one shard)."""

import numpy as np

from smoothcert import config as config_mod
from smoothcert import methods
from smoothcert.commands._common import add_shard_job, setup, shard_inputs
from smoothcert.commands._model import load_base_model, num_classes
from smoothcert.errors import require
from smoothcert.pipeline.certify import certify_shard, load_theta

HELP = "certify one shard of the test set with one method; rows are written as they finish (resumable)"


def add_arguments(p):
    add_shard_job(p)
    p.add_argument(
        "--method",
        required=True,
        choices=methods.names(),
        help="; ".join(f"{m.name}: {m.summary}" for m in methods.registry().values()),
    )
    p.add_argument("--theta", default=None, help="θ shard file from optimize-sigma (per-input methods)")
    p.add_argument("--out", required=True, help="shard TSV to write")


def run(args):
    cfg, device = setup(args)
    spec = config_mod.model_spec(cfg, args.model)
    method = methods.get(args.method)
    x, y, idx = shard_inputs(cfg, args)
    theta = None
    if method.per_input_sigma:
        require(args.theta is not None, f"method {args.method} needs --theta (from optimize-sigma)")
        theta = load_theta(args.theta, idx, int(np.prod(x.shape[1:])))
    model = load_base_model(cfg, spec, args.checkpoint, x, args.data, device, gradients=False)
    certify_shard(
        cfg,
        spec,
        method,
        model,
        x[idx],
        y[idx],
        idx,
        args.out,
        device,
        theta=theta,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        theta_file=args.theta if theta is not None else None,
        num_classes=num_classes(cfg, args.data),
    )
