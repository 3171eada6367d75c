"""Decoding: the cache against the full forward, beam 1 against greedy, a full-width beam against brute force,
sampling filters against their definitions, and batches of different lengths against one-by-one decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import selfattn
from selfattn.generation import beam_search, filter_logits, greedy, length_penalty, sample
from selfattn.generation.beam import TOP_BLOCK, top_w

PAD, BOS, EOS = 0, 1, 2


def _encdec(dtype=torch.float32, vocab=12, seed=0):
    torch.manual_seed(seed)
    cfg = selfattn.preset("tiny", vocab_size=vocab, d_model=32, d_ff=64, num_heads=4, dropout=0.0)
    return selfattn.build_model(cfg).to(dtype).eval()


def _lm(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = selfattn.preset("char-lm", vocab_size=20, d_model=32, d_ff=64, num_decoder_layers=2)
    return selfattn.build_model(cfg).to(dtype).eval()


def _full_logits_encdec(model, src, out_tokens):
    """Uncached teacher-forced logits at every generated position (the reference)."""
    tgt = torch.tensor([[BOS, *out_tokens[:-1]]])
    return model(src, tgt)[0]  # (n, V)


@pytest.mark.parametrize("kind", ["encdec", "lm"])
def test_cached_step_logits_equal_full_forward_float64(kind):
    eps = torch.finfo(torch.float64).eps
    if kind == "encdec":
        model = _encdec(torch.float64)
        src = torch.tensor([[5, 6, 7, 8, 9]])
        cache, (memory, mask, _) = model.new_cache(), model.encode(src)
        tgt = torch.tensor([[BOS, 4, 9, 3, 7, 11, 5]])
        steps = torch.cat([model.decode(tgt[:, i : i + 1], memory, mask, cache=cache)[0] for i in range(7)], 1)
        full = model(src, tgt)
    else:
        model = _lm(torch.float64)
        x = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 1]])
        cache = model.new_cache()
        steps = torch.cat([model(x[:, :3], cache=cache)] + [model(x[:, i : i + 1], cache=cache) for i in range(3, 8)], 1)
        full = model(x)
    steps, full = steps.detach(), full.detach()
    # a few hundred float64 roundings per logit (layers x width); 1e4·eps leaves room for reassociation
    torch.testing.assert_close(steps, full, rtol=0, atol=1e4 * eps * float(full.abs().max()))


def test_greedy_cached_equals_uncached_and_full_forward_argmax():
    model = _encdec()
    src = torch.tensor([[5, 6, 7, 8], [9, 4, 4, 3]])
    a = greedy(model, src=src, max_new_tokens=12, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    b = greedy(model, src=src, max_new_tokens=12, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD, use_cache=False)
    assert a == b
    for i, out in enumerate(a):  # each chosen token is the argmax of the full forward (pad/bos banned)
        logits = _full_logits_encdec(model, src[i : i + 1], out)
        logits[:, [PAD, BOS]] = float("-inf")
        assert logits.argmax(-1).tolist() == out


def test_lm_greedy_cached_equals_uncached():
    model = _lm()
    prompt = torch.tensor([[3, 4, 5], [7, 7, 1]])
    a = greedy(model, prompt=prompt, max_new_tokens=20)
    b = greedy(model, prompt=prompt, max_new_tokens=20, use_cache=False)
    assert a == b and all(len(x) == 20 for x in a)


def test_batched_different_lengths_equal_one_by_one():
    model = _encdec()
    srcs = [[5, 6, 7], [8, 9, 10, 11, 4], [3]]
    batched = greedy(model, src=srcs, max_new_tokens=8, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    single = [greedy(model, src=[s], max_new_tokens=8, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)[0]
              for s in srcs]
    assert batched == single
    lm = _lm()
    prompts = [[3, 4], [5, 6, 7, 8], [9]]
    batched = greedy(lm, prompt=prompts, max_new_tokens=6)
    assert batched == [greedy(lm, prompt=[p], max_new_tokens=6)[0] for p in prompts]


def test_beam_size_one_equals_greedy():
    model = _encdec(seed=3)
    src = [[5, 6, 7, 8], [9, 10, 3]]
    g = greedy(model, src=src, max_new_tokens=10, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    b = beam_search(model, src=src, beam_size=1, max_new_tokens=10, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    assert [h[0].tokens for h in b] == g


@pytest.mark.parametrize("early_stopping", [False, "best"])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_full_width_beam_finds_brute_force_best(alpha, early_stopping):
    """Vocabulary {pad, bos, eos, 3, 4}: outputs are sequences over {eos, 3, 4} ending in eos or at length 4."""
    model = _encdec(torch.float64, vocab=5, seed=1)
    src = torch.tensor([[3, 4, 4, 3]])
    max_len = 4
    with torch.no_grad():
        memory, mask, _ = model.encode(src)
    memory, mask, _ = model.encode(src)

    @torch.no_grad()
    def score(seq):
        tgt = torch.tensor([[BOS, *seq[:-1]]])
        logp = model.decode(tgt, memory, mask)[0][0].log_softmax(-1)  # (n, V)
        lp = sum(float(logp[i, t]) for i, t in enumerate(seq))
        return lp / length_penalty(len(seq), alpha), lp

    candidates = []
    for n in range(1, max_len + 1):
        for body in itertools.product([3, 4], repeat=n - 1):
            candidates.append([*body, EOS])
        if n == max_len:
            candidates += [list(t) for t in itertools.product([3, 4], repeat=n)]
    ranked = sorted(candidates, key=lambda s: -score(s)[0])
    hyps = beam_search(model, src=src, beam_size=16, max_new_tokens=max_len, length_alpha=alpha,
                       early_stopping=early_stopping, num_return=3, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)[0]
    assert [h.tokens for h in hyps] == ranked[:3]
    for h in hyps:
        s, lp = score(h.tokens)
        assert math.isclose(h.logprob, lp, rel_tol=1e-9) and math.isclose(h.score, s, rel_tol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("num_return", [1, 2])
def test_best_stopping_returns_what_the_exact_search_returns_in_fewer_steps(alpha, num_return):
    """early_stopping="best" stops once its num_return best finished cannot be beaten: the same hypotheses as
    the exact rule (False), never more decoder steps, and fewer on some input (else the rule changes nothing)."""
    model = _encdec(torch.float64, vocab=7, seed=4)
    calls = {"n": 0}
    decode = model.decode

    def counting(*a, **kw):
        calls["n"] += 1
        return decode(*a, **kw)

    model.decode = counting
    kw = dict(beam_size=4, max_new_tokens=12, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD, length_alpha=alpha,
              num_return=num_return)
    steps, results = {}, {}
    for rule in (False, "best"):
        results[rule], steps[rule] = [], []
        for s in ([5, 3, 4], [6], [4, 4, 6, 5], [3, 5, 5, 6, 4], [6, 3]):
            calls["n"] = 0
            results[rule].append([(h.tokens, h.score) for h in beam_search(model, src=[s], early_stopping=rule, **kw)[0]])
            steps[rule].append(calls["n"])
    assert results["best"] == results[False]
    assert all(a <= b for a, b in zip(steps["best"], steps[False])) and steps["best"] != steps[False], steps


def test_beam_refuses_unknown_early_stopping():
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        beam_search(_encdec(), src=[[5, 6]], bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD, early_stopping="never")


def test_beam_cached_equals_uncached():
    model = _encdec(seed=2)
    kw = dict(src=[[5, 6, 7], [8, 9]], beam_size=3, max_new_tokens=8, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD,
              num_return=3)
    a, b = beam_search(model, **kw), beam_search(model, use_cache=False, **kw)
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]


@pytest.mark.parametrize("kind", ["encdec", "lm"])
def test_a_generated_pad_id_is_a_token_with_and_without_the_cache(kind):
    """With pad not banned it may be generated; the uncached reference must not mask it as padding."""
    model = _encdec(torch.float64, vocab=6, seed=3) if kind == "encdec" else _lm(torch.float64, seed=3)
    with torch.no_grad():  # make the pad id a likely output (its row a scaled copy of the final norm's direction)
        model.output.weight[PAD] = 3 * model.output.weight.abs().max() * torch.sign(model.output.weight[4])
    inputs = dict(src=[[5, 3, 4], [4, 4]]) if kind == "encdec" else dict(prompt=[[5, 3, 4], [4, 7, 9]])
    kw = dict(**inputs, beam_size=3, num_return=3, max_new_tokens=6, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD,
              banned=[BOS])
    a, b = beam_search(model, **kw), beam_search(model, use_cache=False, **kw)
    assert any(PAD in h.tokens for x in a for h in x), "the case must generate the pad id"
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]
    for x, y in zip(a, b):
        for h, g in zip(x, y):
            assert math.isclose(h.logprob, g.logprob, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("early_stopping", [True, False, "best"])
def test_beam_batch_equals_each_input_alone(early_stopping):
    """Inputs that finish early leave the batch; the others' beams, logprobs and n-best lists are unchanged."""
    model = _encdec(torch.float64, vocab=6, seed=1)  # a small vocabulary: the stop token comes early or late
    src = [[5, 3, 4, 5, 4, 3], [3], [4, 4, 4], [5, 5, 3, 4], [3, 3, 5, 4, 5]]
    kw = dict(beam_size=3, max_new_tokens=9, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD, num_return=3,
              early_stopping=early_stopping, length_alpha=0.6)
    batched = beam_search(model, src=src, **kw)
    alone = [beam_search(model, src=[s], **kw)[0] for s in src]
    assert [[h.tokens for h in x] for x in batched] == [[h.tokens for h in x] for x in alone]
    for x, y in zip(batched, alone):
        for h, g in zip(x, y):
            assert math.isclose(h.logprob, g.logprob, rel_tol=1e-9, abs_tol=1e-12)
    last = {max(len(h.tokens) for h in x) for x in batched}  # the step each input left the batch
    assert len(last) > 1, "the case must have inputs finishing at different steps"


def _rows(kind: str, v: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(v)
    x = torch.randn(6, v, generator=gen, dtype=torch.float64).log_softmax(-1)
    if kind == "ties":  # few distinct values: many equal candidates across blocks
        x = (x * 2).round()
    elif kind == "one block":  # the w largest all in one block
        x[:, 3 * TOP_BLOCK : 3 * TOP_BLOCK + 20] += 50
    elif kind == "tail":  # the largest in the last, partial block
        x[:, -3:] += 50
    elif kind == "-inf":  # banned columns and a row with only two finite values
        x[:, ::7] = float("-inf")
        x[2, 2:] = float("-inf")
    elif kind == "nan":  # NaN counts as the largest value, as in topk
        x[1, 5] = x[4, v - 1] = x[4, 70] = float("nan")
    return x


@pytest.mark.parametrize("kind", ["random", "ties", "one block", "tail", "-inf", "nan"])
@pytest.mark.parametrize("v,w", [(8000, 8), (8003, 8), (64 * 40, 10), (100, 4), (3000, 2)])
def test_top_w_gives_the_values_of_topk(kind, v, w):
    """Blocked top-w equals torch.topk's values (sorted, NaN first, ties included) and its columns hold them."""
    x = _rows(kind, v)
    want, _ = x.topk(w, dim=-1)
    got, cols = top_w(x, w)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x.gather(1, cols), got, rtol=0, atol=0, equal_nan=True)
    assert all(len(set(r)) == w for r in cols.tolist())  # w distinct columns


def test_beams_share_their_input_memory_instead_of_k_copies(monkeypatch):
    """After the first step (one row per input) every decoding step passes the memory of the inputs still
    decoding, one row each, with beams=k; the cross-attention caches hold one row per input too."""
    model = _encdec(torch.float64, vocab=6, seed=1)
    src, k, seen = [[5, 3, 4, 5, 4, 3], [3], [4, 4, 4], [5, 5, 3, 4]], 3, []
    decode = model.decode

    def spy(tgt, memory, memory_mask=None, *, cache=None, beams=1, **kw):
        seen.append((tgt.shape[0], memory.shape[0], beams, cache.layers[0].cross_attn.length and
                     cache.layers[0].cross_attn.k.shape[0]))
        return decode(tgt, memory, memory_mask, cache=cache, beams=beams, **kw)

    monkeypatch.setattr(model, "decode", spy)
    beam_search(model, src=src, beam_size=k, max_new_tokens=9, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    assert seen[0] == (len(src), len(src), 1, 0)
    assert all(rows == k * inputs and beams == k and cached == inputs for rows, inputs, beams, cached in seen[1:])
    assert len({inputs for _, inputs, _, _ in seen}) > 1, "the case must have inputs leaving the batch"


@pytest.mark.parametrize("src", [[[5, 3, 4]], [[5, 3, 4], [4, 4, 4]], [[5, 3, 4], [3]]], ids=["one", "same-length", "padded"])
def test_a_mask_without_padding_is_dropped_with_the_same_outputs(monkeypatch, src):
    """Sources without padding decode with memory_mask=None (nothing to mask, so no mask handling a step); a padded
    batch keeps its mask. Outputs equal decoding each source alone through the uncached full forward."""
    model = _encdec(torch.float64, vocab=6, seed=2)
    masks, decode = [], model.decode

    def spy(tgt, memory, memory_mask=None, **kw):
        masks.append(memory_mask)
        return decode(tgt, memory, memory_mask, **kw)

    monkeypatch.setattr(model, "decode", spy)
    kw = dict(max_new_tokens=7, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    for search in (greedy, lambda m, **a: [h[0].tokens for h in beam_search(m, beam_size=3, **a)]):
        masks.clear()
        got = search(model, src=src, **kw)
        padded = len({len(s) for s in src}) > 1
        assert masks and all((m is not None) == padded for m in masks)
        assert got == [search(model, src=[s], use_cache=False, **kw)[0] for s in src]


def test_greedy_batch_equals_each_input_alone():
    """Inputs that produced the stop token leave the batch; the others decode on unchanged."""
    model = _encdec(torch.float64, vocab=6, seed=0)
    src = [[5, 3, 4, 5, 4, 3], [3], [4, 4, 4], [5, 5, 3, 4], [3, 3, 5, 4, 5], [4]]
    kw = dict(max_new_tokens=9, bos_id=BOS, stop_tokens=(EOS,), pad_id=PAD)
    batched = greedy(model, src=src, **kw)
    assert batched == [greedy(model, src=[s], **kw)[0] for s in src]
    assert len({len(o) for o in batched}) > 1, "the case must have inputs finishing at different steps"


def test_filter_logits_matches_definitions():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    k = filter_logits(logits, top_k=5)
    for row, orig in zip(k, logits):
        kept = set(torch.isfinite(row).nonzero().flatten().tolist())
        assert kept == set(orig.topk(5).indices.tolist())
    p = filter_logits(logits, top_p=0.7)
    for row, orig in zip(p, logits):
        probs = orig.softmax(-1)
        order = probs.argsort(descending=True).tolist()
        need, mass = [], 0.0  # smallest prefix of the sorted tokens whose mass reaches 0.7
        for t in order:
            need.append(t)
            mass += float(probs[t])
            if mass >= 0.7:
                break
        assert set(torch.isfinite(row).nonzero().flatten().tolist()) == set(need)


def test_sampling_top_k_one_is_greedy_and_seeded_sampling_repeats():
    model = _lm()
    prompt = torch.tensor([[3, 4, 5]])
    assert sample(model, prompt=prompt, max_new_tokens=10, top_k=1) == greedy(model, prompt=prompt, max_new_tokens=10)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = sample(model, prompt=prompt, max_new_tokens=10, temperature=1.5, top_p=0.9, generator=g1)
    b = sample(model, prompt=prompt, max_new_tokens=10, temperature=1.5, top_p=0.9, generator=g2)
    assert a == b


def test_stop_tokens_end_rows_and_bad_arguments_raise():
    model = _lm()
    out = greedy(model, prompt=torch.tensor([[3, 4, 5]]), max_new_tokens=30)
    stop = out[0][2]
    stopped = greedy(model, prompt=torch.tensor([[3, 4, 5]]), max_new_tokens=30, stop_tokens=(stop,))
    assert stopped[0] == out[0][: out[0].index(stop) + 1]
    with pytest.raises(ValueError, match="exactly one"):
        greedy(model, max_new_tokens=3)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, prompt=torch.tensor([[3]]), temperature=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, prompt=torch.tensor([[3]]), beam_size=2, num_return=3)


def test_learned_positions_crop_the_context_past_max_len():
    """Past the learned table, each step sees the last max_len tokens (nanoGPT): compare with that directly."""
    torch.manual_seed(0)
    cfg = selfattn.preset("char-lm", vocab_size=20, d_model=32, d_ff=64, num_decoder_layers=2, max_len=8)
    model = selfattn.build_model(cfg).eval()
    prompt = torch.tensor([[3, 4, 5, 6, 7]])
    out = greedy(model, prompt=prompt, max_new_tokens=10)[0]
    seq = prompt[0].tolist()
    with torch.no_grad():
        for _ in range(10):
            seq.append(int(model(torch.tensor([seq[-8:]]))[0, -1].argmax()))
    assert out == seq[5:]
