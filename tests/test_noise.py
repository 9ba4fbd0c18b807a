"""The noise streams: keyed by the whole seed, distinct per (seed, input, stream, chunk), reproducible,
independent of batching and threads, with the right distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from smoothcert.engine import noise
from smoothcert.engine.noise import STREAMS, fill_standard, make_generator, stream_seed
from smoothcert.engine.sampling import Sampling, count_classes, noise_threads


def draw(seed: int, n: int = 64, kind: str = "gaussian", calls: int = 1, dtype=torch.float32) -> torch.Tensor:
    """The ``calls``-th draw of n values of a fresh generator for ``seed``."""
    gen = make_generator(seed, "cpu")
    out = torch.empty(n, dtype=dtype)
    for _ in range(calls):
        fill_standard(out, kind, gen)
    return out


@pytest.mark.parametrize("kind", noise.KINDS)
def test_seeds_differing_only_above_bit_32_give_different_noise(kind):
    # torch's CPU generator keeps the low 32 bits of a seed: these would all be the same stream there
    seeds = [5, 5 + 2**32, 5 + 2**40, 5 + 2**62, 5 + 2**63, 5 + 2**64, 5 + 2**100]
    values = [draw(s, kind=kind) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i):
            assert not torch.equal(values[i], values[j]), (seeds[i], seeds[j])
    assert torch.equal(
        torch.randn(4, generator=torch.Generator().manual_seed(5)),
        torch.randn(4, generator=torch.Generator().manual_seed(5 + 2**40)),
    )  # why this matters


def test_same_seed_same_values_and_successive_draws_differ():
    a, b = draw(123, 1000), draw(123, 1000)
    assert torch.equal(a, b)
    gen = make_generator(123, "cpu")
    first, second = torch.empty(1000), torch.empty(1000)
    fill_standard(first, "gaussian", gen)
    fill_standard(second, "gaussian", gen)
    assert torch.equal(first, a) and not torch.equal(first, second)
    assert torch.equal(second, draw(123, 1000, calls=2))


def test_distinct_seed_input_stream_chunk_give_distinct_streams():
    seen = {}
    for seed in (0, 1, 2**33):
        for idx in range(40):
            for stream in STREAMS:
                gen = make_generator(stream_seed(seed, idx, stream), "cpu")
                for chunk in range(3):
                    out = torch.empty(16)
                    fill_standard(out, "gaussian", gen)
                    key = out.numpy().tobytes()
                    assert key not in seen, ((seed, idx, stream, chunk), seen.get(key))
                    seen[key] = (seed, idx, stream, chunk)
    assert len(seen) == 3 * 40 * len(STREAMS) * 3


def test_blocks_of_one_large_draw_are_distinct_streams():
    big = draw(9, 3 * noise.BLOCK + 100).numpy()
    heads = [big[j * noise.BLOCK : j * noise.BLOCK + 32].tobytes() for j in range(4)]
    assert len(set(heads)) == 4
    # the first block of a large draw is not the first block of a smaller one that fits a block: n is part of
    # the draw (block j holds r·cos θ of its pairs first), but the bits are the same stream
    small = draw(9, noise.BLOCK).numpy()
    assert np.array_equal(small, big[: noise.BLOCK])


def test_keys_use_every_bit_and_reject_what_does_not_fit():
    assert noise.key_of(5) == (5, 0)
    assert noise.key_of(5 + 2**64) == (5, 1)
    assert noise.key_of(-1) == (2**64 - 1, 0)  # as torch's manual_seed takes negative seeds
    with pytest.raises(ValueError):
        noise.key_of(2**128)
    with pytest.raises(ValueError):
        noise.key_of(-(2**63) - 1)


def test_gaussian_moments_and_distribution():
    z = draw(2024, 2_000_000).double().numpy()
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert abs(z.var() - 1) < 0.005
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 0.03
    assert abs(sps.skew(z)) < 0.01
    assert sps.kstest(z[:200_000], "norm").pvalue > 1e-3
    assert np.abs(z).max() <= np.sqrt(-2 * np.log(2.0**-24)) + 1e-5  # Box–Muller on 24-bit uniforms
    assert np.isfinite(z).all()


def test_uniform_range_and_moments():
    u = draw(77, 2_000_000, kind="uniform").double().numpy()
    assert u.min() >= -1.0 and u.max() < 1.0
    assert u.min() < -0.9999 and u.max() > 0.9999
    assert abs(u.mean()) < 4 * np.sqrt(1 / 3 / len(u))
    assert abs(u.var() - 1 / 3) < 0.002
    assert sps.kstest(u[:200_000], "uniform", args=(-1, 2)).pvalue > 1e-3
    assert np.allclose(u * 2**23, np.round(u * 2**23))  # on the grid k·2⁻²³ − 1


def test_streams_are_uncorrelated():
    a = draw(stream_seed(0, 1, "estimate"), 100_000).double().numpy()
    b = draw(stream_seed(0, 2, "estimate"), 100_000).double().numpy()
    c = draw(stream_seed(0, 1, "select"), 100_000).double().numpy()
    for u, v in ((a, b), (a, c), (a[:-1], a[1:])):
        assert abs(np.corrcoef(u, v)[0, 1]) < 4 / np.sqrt(len(u))
    # the cosine and sine halves of a draw (same pairs) are uncorrelated too
    assert abs(np.corrcoef(a[:50_000], a[50_000:])[0, 1]) < 4 / np.sqrt(50_000)


@pytest.mark.parametrize("kind", noise.KINDS)
def test_values_do_not_depend_on_where_or_with_what_they_are_drawn(kind):
    sizes = [1, 7, 64, 127, 1000, 6400, noise.BLOCK + 3]
    alone = [draw(100 + i, n, kind=kind) for i, n in enumerate(sizes)]
    # all in one transform, packed back to back at odd offsets into one buffer
    base = np.full(sum(sizes) + 5, np.nan, dtype=np.float32)
    parts, offset = [], 3
    for i, n in enumerate(sizes):
        parts += noise.parts_of(noise.key_of(100 + i), 0, base, offset, n)
        offset += n
    noise.draw_parts(parts, kind)
    offset = 3
    for n, ref in zip(sizes, alone):
        assert np.array_equal(base[offset : offset + n], ref.numpy())
        offset += n
    # fill_many (in parallel), float64 and non-contiguous outputs
    outs = [torch.empty(n, dtype=torch.float64) for n in sizes]
    noise.fill_many(outs, kind, [make_generator(100 + i, "cpu") for i in range(len(sizes))])
    assert all(torch.equal(o, r.double()) for o, r in zip(outs, alone))
    strided = torch.empty(2 * 1000)[::2]
    fill_standard(strided, kind, make_generator(104, "cpu"))
    assert torch.equal(strided, alone[4])


def test_the_generator_is_a_torch_generator_and_plain_ones_still_work():
    gen = make_generator(11, "cpu")
    assert isinstance(gen, torch.Generator) and gen.device.type == "cpu"
    torch.rand(3, generator=gen)  # torch's own random functions accept it (augmentation choices)
    ref = torch.empty(50).normal_(generator=torch.Generator().manual_seed(3))
    got = fill_standard(torch.empty(50), "gaussian", torch.Generator().manual_seed(3))
    assert torch.equal(got, ref)
    with pytest.raises(ValueError):
        fill_standard(torch.empty(3), "laplace", gen)


def test_noisy_copies_differentiate_through_x_and_scale_only():
    x = torch.rand(3, 1, 2, 2, requires_grad=True)
    sigma = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = noise.noisy_copies(x, sigma, 5, "gaussian", make_generator(1, "cpu"))
    assert z.shape == (15, 1, 2, 2)
    z.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 5.0))
    eps = torch.empty(3, 5, 1, 2, 2)
    fill_standard(eps, "gaussian", make_generator(1, "cpu"))
    assert torch.allclose(sigma.grad, eps.sum((1, 2, 3, 4)))


class PixelVote(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :4]


@pytest.mark.parametrize("kind", noise.KINDS)
@pytest.mark.parametrize(
    "b,n,batch_size,chunk", [(5, 300, 128, 100), (3, 250, 1000, 64), (40, 30, 256, 30), (2, 1000, 300, 1000)]
)
def test_counts_are_the_same_drawn_ahead_by_noise_threads_or_in_line(monkeypatch, kind, b, n, batch_size, chunk):
    x = torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seeds = [stream_seed(1, i, "estimate") for i in range(b)]
    sigma = torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.1
    sampling = Sampling(kind=kind, batch_size=batch_size, chunk=chunk)
    got = {}
    for threads in ("0", "1", "3"):
        monkeypatch.setenv("SMOOTHCERT_NOISE_THREADS", threads)
        assert noise_threads() == int(threads)
        got[threads] = count_classes(PixelVote(), x, sigma, n, 4, seeds, sampling)
    assert np.array_equal(got["0"], got["1"]) and np.array_equal(got["0"], got["3"])
    alone = [
        count_classes(PixelVote(), x[i : i + 1], sigma[i : i + 1], n, 4, seeds[i : i + 1], sampling) for i in range(b)
    ]
    assert np.array_equal(got["0"], np.concatenate(alone))


def test_non_finite_logits_vote_for_no_class_in_both_counting_paths(monkeypatch):
    class Broken(nn.Module):
        def forward(self, z):
            out = z.flatten(1)[:, :4].clone()
            out[::3, 1] = float("nan")
            out[1::7, 2] = float("inf")
            return out

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seeds = [stream_seed(2, i, "estimate") for i in range(3)]
    sampling = Sampling(batch_size=100, chunk=50)
    got = []
    for threads in ("0", "1"):
        monkeypatch.setenv("SMOOTHCERT_NOISE_THREADS", threads)
        got.append(count_classes(Broken(), x, 0.3, 300, 4, seeds, sampling))
    assert np.array_equal(got[0], got[1])
    assert (got[0].sum(1) < 300).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_are_keyed_by_the_whole_seed():
    outs = []
    for s in (5, 5 + 2**40):
        out = torch.empty(1000, device="cuda")
        fill_standard(out, "gaussian", make_generator(s, "cuda"))
        outs.append(out.cpu())
    assert not torch.equal(outs[0], outs[1])
    again = fill_standard(torch.empty(1000, device="cuda"), "gaussian", make_generator(5, "cuda")).cpu()
    assert torch.equal(again, outs[0])


# ------------------------------------------------------------------ σ-search draws (optimize.py) use the same streams
def test_per_input_sigma_search_draws_are_each_generators_next_draw():
    from smoothcert.engine import surrogate as sg

    x = torch.rand(4, 1, 3, 3)
    gens = [make_generator(stream_seed(0, i, "optimize"), "cpu") for i in range(4)]
    eps = sg.standard_noise(x, 5, "gaussian", gens)
    for i in range(4):
        assert torch.equal(eps[i], draw(stream_seed(0, i, "optimize"), 45).reshape(5, 1, 3, 3))
    assert all(g.calls == 1 for g in gens)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_central_difference_gradient_matches_autograd(norm):
    from smoothcert.engine import surrogate as sg

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x, sigma = torch.rand(6, 1, 3, 3), torch.linspace(0.2, 0.6, 6)
    eps = sg.standard_noise(x, 64, sg.noise_kind(norm), make_generator(3, "cpu"))  # both read the same draws
    central, _ = sg._central_gradient(model, x, sigma, norm, eps)
    s = sigma.clone().requires_grad_(True)
    r = s * sg.proxy_gap(sg.top2_of_noise(model, x, s, eps, None), norm)  # the search's autograd step
    (exact,) = torch.autograd.grad(r.sum(), s)
    torch.testing.assert_close(central, exact, rtol=2e-3, atol=2e-3)
