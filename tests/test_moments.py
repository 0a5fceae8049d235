"""Second-moment sketches and moment-matching selection (cola.moments), on planted token statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cola.activations import extract_features
from cola.batching import pad_batch
from cola.errors import ColaError
from cola.moments import (MomentSketches, Site, cover_maxima, match_moments, range_coverage, relative_errors,
                          site_maps, sketch_tokens, token_weighted_mean, triangle_size)

from tests.conftest import tiny_llama

D, M = 12, 6


def planted_pool(seed: int = 0, sizes: tuple[int, ...] = (120, 60, 20)) -> tuple[list[np.ndarray], np.ndarray]:
    """Candidates of (n_i, D) tokens, each drawn from one of three Gaussians with very different covariances,
    and each candidate's component (N,)."""
    rng = np.random.default_rng(seed)
    mixes = [rng.normal(size=(D, D)) * scale for scale in (0.5, 1.0, 3.0)]
    mixes[2][0] *= 8.0  # an outlier channel in the rarest component
    pool, labels = [], []
    for component, size in enumerate(sizes):
        for _ in range(size):
            pool.append(rng.normal(size=(int(rng.integers(16, 48)), D)) @ mixes[component].T)
            labels.append(component)
    order = rng.permutation(len(pool))
    return [pool[i] for i in order], np.asarray(labels)[order]


def sketch_pool(pool: list[np.ndarray], seed: int = 0) -> MomentSketches:
    directions, diagonal = site_maps(D, M, seed)
    ids = [list(range(len(x))) for x in pool]
    _, mask = pad_batch(ids, 0)                                     # (N, T)
    x = torch.zeros(len(pool), mask.shape[1], D)
    for row, tokens in enumerate(pool):
        x[row, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.float32)
    values = sketch_tokens(x, mask, directions, diagonal).numpy()
    return MomentSketches(values=values, tokens=np.array([len(t) for t in pool]), sites=(Site(0, ("proj",), D),),
                          sketch_dim=M)


def hessian(pool: list[np.ndarray], rows) -> np.ndarray:
    """Exact per-token H = sum X^T X / sum n of the candidates `rows`."""
    return sum(pool[i].T @ pool[i] for i in rows) / sum(len(pool[i]) for i in rows)


def hessian_error(pool: list[np.ndarray], rows) -> float:
    target = hessian(pool, range(len(pool)))
    return float(np.linalg.norm(hessian(pool, rows) - target) / np.linalg.norm(target))


def test_the_sketch_is_the_projected_covariance_and_diagonal_and_ignores_padding() -> None:
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(5, D))
    directions, diagonal = site_maps(D, M, 3)
    x = torch.zeros(1, 9, D)
    x[0, :5] = torch.as_tensor(tokens, dtype=torch.float32)
    x[0, 5:] = 1e3                                                   # padding must not count
    mask = torch.tensor([[1] * 5 + [0] * 4])
    sketch = sketch_tokens(x, mask, directions, diagonal)[0].numpy()
    g = directions.numpy().astype(np.float64)
    cov = g.T @ (tokens.T @ tokens / 5) @ g
    rows, cols = np.triu_indices(M)
    assert sketch.shape == (triangle_size(M) + 2 * M,)
    np.testing.assert_allclose(sketch[:triangle_size(M)], cov[rows, cols] * np.where(rows == cols, 1, 2 ** 0.5),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sketch[triangle_size(M):], (tokens ** 2).mean(0) @ diagonal.numpy(), rtol=1e-4,
                               atol=1e-4)
    # the triangle's weights make Euclidean distance the Frobenius distance of the m x m matrices
    assert np.linalg.norm(sketch[:triangle_size(M)]) == pytest.approx(np.linalg.norm(cov), rel=1e-4)


def test_moment_matching_reproduces_the_pools_hessian_better_than_random_picks() -> None:
    pool, _ = planted_pool()
    sketches = sketch_pool(pool)
    k = 12
    picks = match_moments(sketches, k)
    rng = np.random.default_rng(0)
    random_errors = [hessian_error(pool, rng.choice(len(pool), k, replace=False)) for _ in range(30)]
    chosen_error = hessian_error(pool, picks)
    # exact H, not only the sketch: the planted mixture's H is matched at a fraction of the random error
    assert chosen_error < 0.25 * float(np.median(random_errors))
    sketch_errors = relative_errors(sketches, picks)
    assert set(sketch_errors) == {"covariance", "diagonal"} and len(sketch_errors["covariance"]) == 1
    assert sketch_errors["covariance"][0] < 0.1


def test_exactly_k_distinct_picks_even_from_duplicates_and_deterministic() -> None:
    sketches = sketch_pool(planted_pool(sizes=(10, 5, 3))[0])
    doubled = MomentSketches(values=np.concatenate([sketches.values] * 3), tokens=np.tile(sketches.tokens, 3),
                             sites=sketches.sites, sketch_dim=M)
    for k in (1, 18, 30, 54):
        picks = match_moments(doubled, k)
        assert len(picks) == k and len(set(picks.tolist())) == k
        assert np.array_equal(picks, match_moments(doubled, k))
    assert sorted(match_moments(doubled, 54).tolist()) == list(range(54))


def test_a_given_target_is_matched_instead_of_the_pools_mean() -> None:
    pool, labels = planted_pool()
    sketches = sketch_pool(pool)
    rare = np.flatnonzero(labels == 2).tolist()  # the outlier component
    target = token_weighted_mean(sketches.values[rare], sketches.tokens[rare])
    picks = match_moments(sketches, 5, target=target)
    assert set(picks.tolist()) <= set(rare)


def test_bad_k_and_target_shape_are_one_line_errors() -> None:
    sketches = sketch_pool(planted_pool(sizes=(4, 2, 2))[0])
    with pytest.raises(ColaError, match="cannot select 9 samples from a pool of 8"):
        match_moments(sketches, 9)
    with pytest.raises(ColaError, match="cannot select 0 samples"):
        match_moments(sketches, 0)
    with pytest.raises(ColaError, match=r"target sketch has shape \(3,\); the candidates' sketches have 33 columns"):
        match_moments(sketches, 2, target=np.zeros(3))


def test_the_model_pass_finds_every_linear_input_once_and_batching_does_not_change_sketches() -> None:
    model = tiny_llama()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 200, size=int(rng.integers(5, 40))).tolist() for _ in range(12)]
    kw = dict(layers=None, projection_dim=8, seed=0, sketch_dim=4, quiet=True)
    together = extract_features(model, seqs, batch_tokens=400, **kw).sketches
    alone = extract_features(model, seqs, batch_size=1, **kw).sketches
    assert [s.name for s in together.sites] == ["0:q_proj+k_proj+v_proj", "0:o_proj", "0:gate_proj+up_proj",
                                                "0:down_proj", "1:q_proj+k_proj+v_proj", "1:o_proj",
                                                "1:gate_proj+up_proj", "1:down_proj"]
    assert together.values.shape == (12, 8 * (triangle_size(4) + 8))
    assert together.tokens.tolist() == [len(s) for s in seqs]
    scale = np.abs(together.values).max()
    np.testing.assert_allclose(alone.values, together.values, atol=1e-4 * scale)
    last = extract_features(model, seqs, batch_tokens=400, **{**kw, "layers": [-1]}).sketches
    assert [s.layer for s in last.sites] == [1, 1, 1, 1]
    other_seed = extract_features(model, seqs, batch_tokens=400, **{**kw, "seed": 1}).sketches
    assert not np.allclose(other_seed.values, together.values)


def test_gpt2_conv1d_layers_are_sites_and_a_block_without_linear_layers_is_an_error() -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                                       n_positions=64)).eval()
    seqs = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
    sketches = extract_features(gpt2, seqs, layers=[0], projection_dim=4, seed=0, sketch_dim=2, quiet=True).sketches
    # GPT-2's Conv1D: c_attn (the fused q/k/v), attention's c_proj, the MLP's c_fc and c_proj
    assert [s.name for s in sketches.sites] == ["0:c_attn", "0:c_proj", "0:c_fc", "0:c_proj"]
    assert [s.width for s in sketches.sites] == [32, 32, 32, 128]
    model = tiny_llama()
    for block in model.model.layers:  # swap every linear for a plain function of the same shape
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear):
                parent = block.get_submodule(name.rsplit(".", 1)[0])
                setattr(parent, name.rsplit(".", 1)[1], _NotLinear(module))
    with pytest.raises(ColaError, match="moments selection found no linear layer in the chosen decoder layers of "
                                        "LlamaDecoderLayer; use --selection_method activations"):
        extract_features(model, seqs, layers=None, projection_dim=4, seed=0, sketch_dim=2, quiet=True)
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


class _NotLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def maxima_pool(n: int = 60, width: int = 16, spikes: int = 6, seed: int = 0) -> tuple[MomentSketches, list[int]]:
    """Two sites of `width` channels; every candidate's max|x| is about 1 per channel, except `spikes`
    candidates that each hold one outlier channel (50x) of the first site: the rows holding them."""
    rng = np.random.default_rng(seed)
    maxima = rng.uniform(0.5, 1.0, size=(n, 2 * width)).astype(np.float32)
    holders = rng.choice(n, spikes, replace=False).tolist()
    for channel, row in enumerate(holders):
        maxima[row, channel] = 50.0
    sites = (Site(0, ("a",), width), Site(0, ("b",), width))
    return MomentSketches(values=np.zeros((n, 1), np.float32), tokens=np.full(n, 10), sites=sites, sketch_dim=1,
                          maxima=maxima), holders


def test_outlier_coverage_recovers_the_candidates_holding_planted_outlier_channels() -> None:
    sketches, holders = maxima_pool()
    picks = cover_maxima(sketches, len(holders) + 4)
    assert set(holders) <= set(picks.tolist())          # every outlier channel reached
    covered = range_coverage(sketches, picks)
    assert len(covered) == 2 and covered[0] > 0.95
    rng = np.random.default_rng(1)
    random_first = [range_coverage(sketches, rng.choice(60, len(picks), replace=False))[0] for _ in range(30)]
    assert covered[0] > max(random_first)
    # a given target is what is covered: the holders' own maxima are reached exactly by the holders
    target = sketches.maxima[holders].max(axis=0)
    assert sorted(cover_maxima(sketches, len(holders), target=target).tolist()) == sorted(holders)


def test_outlier_coverage_picks_k_distinct_rows_deterministically_and_fails_cleanly() -> None:
    sketches, _ = maxima_pool(n=10)
    doubled = MomentSketches(values=np.zeros((30, 1), np.float32), tokens=np.full(30, 10), sites=sketches.sites,
                             sketch_dim=1, maxima=np.concatenate([sketches.maxima] * 3))
    for k in (1, 7, 30):
        picks = cover_maxima(doubled, k)
        assert len(picks) == k and len(set(picks.tolist())) == k
        assert np.array_equal(picks, cover_maxima(doubled, k))
    assert set(cover_maxima(doubled, 10).tolist()) <= set(range(10))  # a copy adds nothing: the first ones win
    with pytest.raises(ColaError, match="cannot select 31 samples from a pool of 30"):
        cover_maxima(doubled, 31)
    with pytest.raises(ColaError, match=r"target maxima have shape \(3,\); the candidates' maxima have 32 columns"):
        cover_maxima(doubled, 2, target=np.ones(3))
    no_maxima = MomentSketches(values=doubled.values, tokens=doubled.tokens, sites=doubled.sites, sketch_dim=1)
    with pytest.raises(ColaError, match="needs per-channel maxima"):
        cover_maxima(no_maxima, 2)


def test_the_model_pass_records_each_inputs_per_channel_maxima_over_real_tokens_only() -> None:
    model = tiny_llama()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 200, size=int(rng.integers(5, 40))).tolist() for _ in range(6)]
    kw = dict(layers=None, projection_dim=8, seed=0, sketch_dim=4, channel_maxima=True, quiet=True)
    batched = extract_features(model, seqs, batch_tokens=400, **kw).sketches
    assert batched.maxima.shape == (6, sum(site.width for site in batched.sites))
    seen = []  # the first site (layer 0's q/k/v input), each sequence alone: no padding at all
    handle = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda _m, inputs: seen.append(inputs[0][0].abs().amax(dim=0).float().numpy()))
    with torch.inference_mode():
        for ids in seqs:
            model(input_ids=torch.tensor([ids]), use_cache=False)
    handle.remove()
    first = batched.site_columns()[0]
    np.testing.assert_allclose(batched.maxima[:, first], np.stack(seen), rtol=1e-3, atol=1e-5)
    with pytest.raises(ColaError, match="channel maxima are read with the moment sketches: give sketch_dim"):
        extract_features(model, seqs, **{**kw, "sketch_dim": None})
