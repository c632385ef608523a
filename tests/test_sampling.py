"""The batch sampler: every row's token in a few tensor operations, as transformers' processors and warpers would
choose it, with a generator per row that makes a seeded row's draws independent of its batch."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llama_space.errors import UserError
from llama_space.inference import nucleus, sampling
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.sampling import INVALID_TOKEN, BatchSampler, OpenAIPenalties, SampledChoice, choose_rows

VOCAB = 4096
PROMPT = [3, 5, 5, 9]
# Rows with different settings: top-k alone, top-p alone, both, neither, a k past the candidates, top-k 1.
SETTINGS = [{"temperature": 0.7, "top_k": 50, "top_p": 1.0}, {"temperature": 1.3, "top_k": 0, "top_p": 0.9},
            {"temperature": 0.5, "top_k": 40, "top_p": 0.8}, {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
            {"temperature": 2.0, "top_k": 2000, "top_p": 0.95}, {"temperature": 0.9, "top_k": 1, "top_p": 0.5}]


def logits(rows: int, seed: int, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def batch(params: list[GenerationParams], prompt: list[int] = PROMPT) -> BatchSampler:
    sampler = BatchSampler()
    for p in params:
        sampler.extend(BatchSampler.for_row(p, prompt, VOCAB, "cpu"))
    return sampler


def transformers_warped(scores: torch.Tensor, settings: dict) -> torch.Tensor:
    """`scores` [1, vocab] through transformers' Temperature, TopK and TopP warpers."""
    warpers = [TemperatureLogitsWarper(settings["temperature"])]
    if settings["top_k"]:
        warpers.append(TopKLogitsWarper(settings["top_k"]))
    if settings["top_p"] < 1:
        warpers.append(TopPLogitsWarper(settings["top_p"]))
    for warper in warpers:
        scores = warper(None, scores)
    return scores


@pytest.mark.parametrize("candidates", [256, 16])
def test_draws_follow_transformers_warpers(monkeypatch, candidates):
    """Rows with different temperature/top-k/top-p draw from exactly the distribution transformers' warpers
    leave, whether their nucleus lies within the candidates or (16 candidates) some rows fall back to a sort:
    a uniform at the middle of a token's share of transformers' cumulative distribution draws that token, and
    one at the very top draws the least likely token transformers keeps (so no token is missing or extra)."""
    monkeypatch.setattr(nucleus, "CANDIDATES", candidates)
    settings = [row for row in SETTINGS if row["top_k"] or row["top_p"] < 1]
    vocab, top = 1024, float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
    for seed, scale in ((0, 4.0), (1, 1.0)):  # peaked and flat distributions
        rows, expected, uniforms = [], [], []
        for i, row in enumerate(settings):
            scores = torch.randn(1, vocab, generator=torch.Generator().manual_seed(10 * seed + i)) * scale
            probs = torch.softmax(transformers_warped(scores, row), dim=-1)[0]
            order = probs.argsort(descending=True)[:int((probs > 0).sum())]
            shares = probs[order]
            rows += [(scores[0], row)] * (len(order) + 1)
            expected += order.tolist() + [int(order[-1])]
            uniforms += (shares.cumsum(0) - shares / 2).tolist() + [top]
        top_k = torch.tensor([row["top_k"] for _, row in rows])
        top_p = torch.tensor([row["top_p"] for _, row in rows])
        drawn = nucleus.sample(torch.stack([scores for scores, _ in rows]),
                               torch.tensor([[row["temperature"]] for _, row in rows]), top_k, top_p,
                               torch.tensor(uniforms), int(top_k.max()), bool(((top_k == 0) & (top_p < 1)).any()))
        assert drawn.tolist() == expected


def test_penalties_are_transformers_and_openais():
    """Repetition penalty over prompt and reply, then OpenAI's penalties over the reply and the bias, per row."""
    params = [GenerationParams(temperature=0, repetition_penalty=1.3),
              GenerationParams(temperature=0.8, frequency_penalty=0.5, presence_penalty=-1.0, logit_bias={7: 3.0}),
              GenerationParams(temperature=0.8, repetition_penalty=0.7, frequency_penalty=1.5, logit_bias={1: -5.0}),
              GenerationParams(temperature=0)]
    sampler = batch(params)
    reply = [[11, 5, 11], [2, 2, 4], [5, 6, 6], [1, 1, 1]]
    for step in range(3):  # the reply's tokens go into the histories as if chosen
        sampler._record(torch.tensor([tokens[step] for tokens in reply]))
    scores = logits(4, 3)
    ours = sampler._penalized(scores)
    for row, (p, tokens) in enumerate(zip(params, reply)):
        ids = torch.tensor([PROMPT + tokens])
        expected = scores[row:row + 1]
        if p.repetition_penalty != 1:
            expected = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, expected.clone())
        if p.penalizes:
            expected = OpenAIPenalties(p, prompt_length=len(PROMPT))(ids, expected)
        assert torch.equal(ours[row], expected[0])


def test_greedy_rows_take_the_argmax_and_sampled_rows_a_kept_token():
    params = [GenerationParams(temperature=0), GenerationParams(**SETTINGS[2], seed=1), GenerationParams(temperature=0)]
    sampler = batch(params)
    for step in range(80):  # past a block of uniforms
        scores = logits(3, 100 + step)
        tokens = sampler.choose(scores)
        assert tokens[0] == scores[0].argmax() and tokens[2] == scores[2].argmax()
        assert bool(torch.isfinite(transformers_warped(scores[1:2], SETTINGS[2]))[0, tokens[1]])


def test_a_seeded_row_draws_the_same_whatever_it_is_batched_with():
    """A seeded row alone, then batched with rows that join and leave, chooses the same tokens from the same
    logits; torch's global generator is never drawn from."""
    seeded = GenerationParams(temperature=1.5, top_k=0, top_p=0.95, seed=7)
    steps = [logits(1, 200 + step, 1.0) for step in range(150)]  # flat: the draws decide
    alone = batch([seeded])
    expected = [int(alone.choose(scores)[0]) for scores in steps]
    state = torch.get_rng_state()
    others = [GenerationParams(temperature=0.9), GenerationParams(temperature=0), GenerationParams(**SETTINGS[1])]
    crowd = batch(others[:1])
    for _ in range(5):
        crowd.choose(logits(1, 5))
    crowd.extend(batch([seeded]))  # joins a batch already 5 steps in
    chosen = []
    for step, scores in enumerate(steps):
        if step == 30:
            crowd.extend(batch(others[1:]))
        if step == 90:
            crowd.keep([0, 1, 3])  # the seeded row stays row 1; the greedy row leaves
        rows = len(crowd)
        mixed = logits(rows, 300 + step)
        mixed[1] = scores[0]  # the seeded row is row 1 throughout
        chosen.append(int(crowd.choose(mixed)[1]))
    assert chosen == expected
    assert len(set(expected)) > 50  # really sampled
    assert torch.equal(torch.get_rng_state(), state)


def test_the_serial_decoder_samples_as_a_batch_of_one():
    seeded = GenerationParams(temperature=0.9, top_p=0.8, repetition_penalty=1.2, seed=3)
    choice, row = SampledChoice(seeded), batch([seeded], PROMPT)
    for step in range(70):
        scores = logits(1, 400 + step)
        token = row.choose(scores)
        processed = choice(torch.tensor([PROMPT]), scores)
        assert int(processed.argmax()) == int(token) and int(torch.isfinite(processed).sum()) == 1


def test_a_row_samples_with_a_generator_on_its_logits_device():
    """A model spread over GPUs gives its logits on the last one: a row's generator is made on the device of the
    logits its request's first token is chosen from."""
    row = BatchSampler.for_row(GenerationParams(temperature=0.8, seed=3), PROMPT, VOCAB, torch.device("cpu"))
    assert row.generators[0].device == torch.device("cpu") and row.generators[0].initial_seed() == 3


def test_a_decode_step_makes_no_per_row_call_and_no_full_sort(monkeypatch):
    """32 rows with top-k/top-p (and rows with top-p alone whose nucleus is within the candidates): one top-k
    for the batch per step, no sort, no draw per row except one block of uniforms per row per UNIFORM_BLOCK."""
    calls = {"sort": [], "topk": 0, "rand": 0}
    sort, topk, rand = torch.sort, torch.topk, torch.rand

    def spy_sort(input, *args, **kwargs):
        calls["sort"].append(tuple(input.shape))
        return sort(input, *args, **kwargs)

    def spy_topk(*args, **kwargs):
        calls["topk"] += 1
        return topk(*args, **kwargs)

    def spy_rand(*args, **kwargs):
        calls["rand"] += 1
        return rand(*args, **kwargs)

    params = [GenerationParams(temperature=0.7, top_k=50 if i % 2 else 0, top_p=0.9, seed=i) for i in range(32)]
    sampler = batch(params)
    monkeypatch.setattr(torch, "sort", spy_sort)
    monkeypatch.setattr(torch, "topk", spy_topk)
    monkeypatch.setattr(torch, "rand", spy_rand)
    steps = sampling.UNIFORM_BLOCK + 6
    for step in range(steps):
        assert all(pick >= 0 for pick in choose_rows(sampler, logits(32, 500 + step, 8.0)))
    assert calls == {"sort": [], "topk": steps, "rand": 32}  # one new block per row, after UNIFORM_BLOCK steps
    flat = logits(32, 1, 0.1)  # the top-p rows' nucleus is wider than the candidates: those rows alone are sorted
    choose_rows(sampler, flat)
    assert calls["sort"] == [(16, VOCAB)]


def test_rows_with_invalid_scores_or_a_failing_choice_fail_alone(monkeypatch):
    params = [GenerationParams(temperature=0.8, seed=i) for i in range(3)] + [GenerationParams(temperature=0)]
    sampler = batch(params)
    scores = logits(4, 6)
    scores[1, 17] = float("nan")
    scores[3] = float("-inf")
    picks = choose_rows(sampler, scores)
    assert isinstance(picks[0], int) and isinstance(picks[2], int)
    assert all(isinstance(pick, UserError) and "NaN/inf" in str(pick) for pick in (picks[1], picks[3]))
    # A batch whose choice raises chooses row by row: only the row it raises for fails.
    original = BatchSampler._sample

    def fails_for_seed_2(self, scores):
        if any(p.seed == 2 for p in self.params):
            raise RuntimeError("sampler broke (simulated)")
        return original(self, scores)

    monkeypatch.setattr(BatchSampler, "_sample", fails_for_seed_2)
    picks = choose_rows(sampler, logits(4, 7))
    assert [type(pick) for pick in picks] == [int, int, RuntimeError, int] and len(sampler) == 4
    assert sampler.step == 2 and choose_rows(sampler, logits(4, 8))[0] >= 0
    assert INVALID_TOKEN not in choose_rows(batch(params[:2]), logits(2, 9))
