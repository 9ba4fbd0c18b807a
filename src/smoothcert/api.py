"""The Python API over the pipeline's files: a config, a trained model, and certificate rows as the pipeline
writes them.

:func:`certify_inputs` runs the certify stage's own code on the inputs asked for, so each row equals that
input's row of the pipeline's ``certify.tsv`` (same config, same model): every input's noise is seeded from
``(seed, input index)``, whatever other inputs are certified beside it. Only ``time`` differs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from smoothcert import config as config_mod


def load_config(path: str | Path = "params.yaml", overrides: Sequence[str | Path] = ()) -> dict:
    """params.yaml with ``overrides`` merged over it as ``snakemake --configfile`` merges them, validated."""
    return config_mod.load(path, tuple(overrides))


def load_model(checkpoint: str | Path, cfg: dict | None = None, device=None):
    """A trained base classifier (``models/<dataset>/<model>/model.pt``), in eval mode, on ``device``.

    Architecture and dataset come from ``cfg``, else from the config the checkpoint was trained with;
    with ``cfg`` it is prepared exactly as the pipeline's certify jobs prepare it (``channels_last``).
    Loaded with ``weights_only=True``.
    """
    from smoothcert.artifacts import load_torch
    from smoothcert.errors import require
    from smoothcert.training.models import load_model as load

    if cfg is None:
        blob = load_torch(checkpoint, what="checkpoint")
        require(isinstance(blob, dict) and isinstance(blob.get("config"), dict), f"{checkpoint} holds no config")
        cfg = blob["config"]
    return load(cfg, checkpoint, device if device is not None else config_mod.resolve_device(cfg))


def test_inputs(cfg: dict, data: str | Path | None = None):
    """The test split (x, y) of the prepared data (default ``data/prepared/<dataset>``) and the indices the
    pipeline certifies (the config's ``test`` section)."""
    from smoothcert import data as data_mod
    from smoothcert.inputs import configured_indices

    dataset = cfg["data"]["dataset"]
    x, y = data_mod.load_split(data or f"data/prepared/{dataset}", "test", dataset)
    return x, y, configured_indices(cfg, len(x))


def certify_inputs(
    cfg: dict,
    model_id: str,
    indices: Sequence[int],
    method: str,
    *,
    model=None,
    data: str | Path | None = None,
    theta: str | Path | None = None,
):
    """Certificate rows of test inputs ``indices`` by ``method`` (a registered method name), as a pandas
    DataFrame indexed by ``idx`` with the pipeline's columns.

    ``model``: the base classifier (default: ``models/<dataset>/<model_id>/model.pt`` loaded with ``cfg``);
    ``theta``: for a per-input σ/θ method, the θ file of the shard holding ``indices``
    (``results/<dataset>/<model_id>/<method>/theta/<i>-of-<n>.pt``).
    """
    import numpy as np

    from smoothcert import methods
    from smoothcert.errors import require
    from smoothcert.pipeline.certify import certify_shard, load_theta

    spec = config_mod.model_spec(cfg, model_id)
    x, y, _ = test_inputs(cfg, data)
    idx = np.asarray(indices, dtype=np.int64)
    require(len(idx) > 0 and idx.min() >= 0 and idx.max() < len(x), f"indices must lie in 0..{len(x) - 1}")
    device = config_mod.resolve_device(cfg)
    if model is None:
        model = load_model(f"models/{cfg['data']['dataset']}/{model_id}/model.pt", cfg, device)
    method = methods.get(method)
    loaded = None
    if method.per_input_sigma:
        require(theta is not None, f"method {method.name} certifies with per-input θ: pass theta= its θ file")
        loaded = load_theta(theta, idx, int(np.prod(x.shape[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.tsv"
        rows = certify_shard(cfg, spec, method, model, x[idx], y[idx], idx, out, device, theta=loaded, progress=False)
    return rows.set_index("idx")
