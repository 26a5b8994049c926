import numpy as np
import pytest

from tunelab.inference.options import GenerationOptions
from tunelab.inference.sampling import apply_repetition_penalty, sample_batch, sample_next

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


def draws(options: GenerationOptions, logits=LOGITS, n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([sample_next(logits, [], options, rng) for _ in range(n)])


def test_greedy_is_argmax_and_ignores_the_rng():
    logits = np.array([0.1, 3.0, -2.0, 2.9], dtype=np.float32)
    assert sample_next(logits, [], GenerationOptions(), np.random.default_rng(1)) == 1
    assert sample_next(logits, [], GenerationOptions(), np.random.default_rng(2)) == 1


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = np.array([4.0, -1.0, 2.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 0, 0], 2.0)
    assert out.tolist() == [2.0, -2.0, 2.0, 1.0]
    assert logits.tolist() == [4.0, -1.0, 2.0, 1.0]  # the caller's array is left alone


def test_repetition_penalty_changes_the_greedy_choice():
    logits = np.array([3.0, 2.0], dtype=np.float32)
    options = GenerationOptions(repetition_penalty=2.0)
    assert sample_next(logits, [0], options, np.random.default_rng(0)) == 1
    assert sample_next(logits, [], options, np.random.default_rng(0)) == 0


def test_sampling_follows_the_softmax_at_temperature_one():
    freq = np.bincount(draws(GenerationOptions(temperature=1.0), n=4000), minlength=4) / 4000
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_low_temperature_concentrates_on_the_best_token():
    assert (draws(GenerationOptions(temperature=0.05), n=300) == 0).all()


def test_top_k_keeps_only_the_k_best():
    assert set(draws(GenerationOptions(temperature=1.0, top_k=2))) == {0, 1}
    assert set(draws(GenerationOptions(temperature=5.0, top_k=1), n=200)) == {0}


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    assert set(draws(GenerationOptions(temperature=1.0, top_p=0.7))) == {0, 1}
    assert set(draws(GenerationOptions(temperature=1.0, top_p=0.9))) == {0, 1, 2}
    assert set(draws(GenerationOptions(temperature=1.0, top_p=0.01), n=200)) == {0}


def test_the_same_seed_draws_the_same_tokens():
    options = GenerationOptions(temperature=1.0)
    assert (draws(options, n=50, seed=7) == draws(options, n=50, seed=7)).all()
    assert (draws(options, n=50, seed=7) != draws(options, n=50, seed=8)).any()


@pytest.mark.parametrize(
    "options",
    [GenerationOptions(), GenerationOptions(repetition_penalty=1.5), GenerationOptions(temperature=0.7)],
)
def test_batch_variant_matches_row_by_row(options):
    logits = np.random.default_rng(0).normal(size=(5, 50)).astype(np.float32)
    histories = [[1, 2], [3], [], [4, 4, 5], [0]]
    batch = sample_batch(logits, histories, options, [np.random.default_rng(i) for i in range(5)])
    rows = [
        sample_next(row, h, options, np.random.default_rng(i))
        for i, (row, h) in enumerate(zip(logits, histories))
    ]
    assert batch == rows
