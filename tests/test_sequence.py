"""Vocabulary round trips, masking, KL annealing, word dropout and training of the sequence VAE."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvae.models import sequence
from jaxvae.objectives import losses
from jaxvae.training import step as train
from jaxvae.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary, tokenize_smiles

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "Clc1ccc(Br)cc1", "c1cc[nH]c1", "C[C@@H](N)C(=O)O",
          "C1CC2CCC1CC%10CC2%10", "O=[N+]([O-])c1ccccc1", "C#N"]
WORDS = ["hello", "world", "jax", "variational"]


def test_smiles_tokenizer_keeps_multi_character_tokens_whole():
    assert tokenize_smiles("Clc1ccc(Br)cc1") == ["Cl", "c", "1", "c", "c", "c", "(", "Br", ")",
                                                 "c", "c", "1"]
    assert tokenize_smiles("c1cc[nH]c1") == ["c", "1", "c", "c", "[nH]", "c", "1"]
    assert tokenize_smiles("C[C@@H](N)C%10") == ["C", "[C@@H]", "(", "N", ")", "C", "%10"]
    with pytest.raises(ValueError, match="no token matches at position 1"):
        tokenize_smiles("C&C")


@pytest.mark.parametrize("tokenizer,corpus", [("smiles", SMILES),
                                              ("char", WORDS + ["naïve café", "a-b c"])])
def test_vocabulary_round_trips_strings_exactly(tokenizer, corpus):
    vocab = Vocabulary.from_corpus(corpus, tokenizer)
    assert vocab.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    for s in corpus:
        assert vocab.decode(vocab.encode(s)) == s
    tokens = vocab.encode_batch(corpus, length=70)
    assert tokens.dtype == np.int32 and tokens.shape == (len(corpus), 70)
    assert vocab.decode_batch(tokens) == corpus
    lengths = [len(vocab.tokenize(s)) for s in corpus]
    for row, n in zip(tokens, lengths):  # tokens, EOS, then only PAD
        assert row[n] == EOS_ID and np.all(row[n + 1:] == PAD_ID) and np.all(row[:n] > UNK_ID)
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.decode_batch(tokens) == corpus


def test_vocabulary_rejects_unknown_tokens_and_rows_too_short():
    vocab = Vocabulary.from_corpus(WORDS)
    with pytest.raises(ValueError, match="token 'z' of 'zebra' is not in the vocabulary"):
        vocab.encode("zebra")
    assert vocab.encode("zebra", unknown="unk")[0] == UNK_ID
    with pytest.raises(ValueError, match="'variational' has 11 tokens and does not fit"):
        vocab.encode_batch(WORDS, length=11)
    with pytest.raises(TypeError, match="wrap it"):
        vocab.encode_batch("hello")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Vocabulary.from_corpus(WORDS, "bytes")


@pytest.fixture(scope="module")
def tiny():
    vocab = Vocabulary.from_corpus(WORDS)
    model = sequence.sequence_vae(len(vocab), embed_dim=16, hidden_dim=48, latent_dim=8)
    params = sequence.init(model, jax.random.key(0))
    return vocab, model, params


def test_padding_never_changes_the_loss_or_its_gradient(tiny):
    vocab, model, params = tiny
    loss_fn = losses.make_sequence_loss(model, warmup_steps=10, word_dropout_rate=0.3)
    key, step = jax.random.key(3), jnp.int32(4)
    short = {"x": jnp.asarray(vocab.encode_batch(WORDS, length=12))}
    long = {"x": jnp.asarray(vocab.encode_batch(WORDS, length=25))}
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, key, step),
                                                has_aux=True))
    ((l_short, m_short), g_short), ((l_long, m_long), g_long) = (value_and_grad(params, short),
                                                                 value_and_grad(params, long))
    np.testing.assert_allclose(l_short, l_long, rtol=1e-6)
    for name in m_short:
        np.testing.assert_allclose(m_short[name], m_long[name], rtol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 g_short, g_long)


def test_reconstruction_term_is_the_cross_entropy_of_the_real_tokens(tiny):
    vocab, model, params = tiny
    tokens = jnp.asarray(vocab.encode_batch(WORDS, length=14))
    z = jax.random.normal(jax.random.key(1), (len(WORDS), model.latent_dim))
    logits = jax.jit(sequence.teacher_forced_logits, static_argnums=0)(
        model, params, z, sequence.decoder_inputs(tokens))
    logits64 = np.asarray(logits, np.float64)
    log_p = logits64 - np.log(np.exp(logits64).sum(-1, keepdims=True))
    expected = [-sum(log_p[b, t, tok] for t, tok in enumerate(np.asarray(tokens[b]))
                     if t <= len(WORDS[b]))  # the word's characters and its EOS
                for b in range(len(WORDS))]
    np.testing.assert_allclose(sequence.reconstruction_nll(logits, tokens), expected, rtol=1e-5)


def test_decoder_step_t_sees_only_earlier_tokens(tiny):
    vocab, model, params = tiny
    tokens = jnp.asarray(vocab.encode_batch(["hello"], length=8))
    other = tokens.at[0, 3].set(vocab.index["w"])
    z = jnp.zeros((1, model.latent_dim))
    a = sequence.teacher_forced_logits(model, params, z, sequence.decoder_inputs(tokens))
    b = sequence.teacher_forced_logits(model, params, z, sequence.decoder_inputs(other))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])  # input t+1 is token t: position 3 on
    assert not np.allclose(a[:, 4], b[:, 4])


# ------------------------------------------- the GRU layer, against a scan of the cell (autodiff)


def _cell_scan(cell_params, hidden, e_LxBxD, h0, keep, reverse):
    """The reference: lax.scan of the Flax cell, differentiated by JAX."""
    cell = sequence.GRUCell(hidden)

    def body(h, xs):
        e_t, keep_t = xs
        new_h = cell.apply({"params": cell_params}, h, e_t)[0]
        new_h = jnp.where(keep_t[:, None], new_h, h)
        return new_h, new_h

    return jax.lax.scan(body, h0, (e_LxBxD, keep), reverse=reverse)[1]


@pytest.mark.parametrize("reverse,final_only,with_z", [(False, False, True), (True, True, False),
                                                       (False, True, False)])
def test_gru_layer_equals_a_scan_of_the_cell_in_values_and_gradients(reverse, final_only, with_z):
    from jaxvae.models import gru
    vocab, embed, latent, hidden, batch, length = 9, 5, 3, 7, 4, 6
    keys = jax.random.split(jax.random.key(0), 6)
    dim = embed + (latent if with_z else 0)
    cell_params = sequence.GRUCell(hidden).init(keys[0], jnp.zeros((1, hidden)),
                                                jnp.zeros((1, dim)))["params"]
    cell_params = jax.tree.map(lambda a: a + 0.1, cell_params)  # biases away from 0
    embedding = jax.random.normal(keys[1], (vocab, embed))
    tokens = jax.random.randint(keys[2], (length, batch), 0, vocab)
    keep = jax.random.uniform(keys[3], (length, batch)) > 0.3
    h0 = jax.random.normal(keys[4], (batch, hidden))
    z = jax.random.normal(keys[5], (batch, latent))
    weights = jnp.linspace(-1.0, 1.0, length * batch * hidden).reshape(length, batch, hidden)

    def reference(p, emb, h0, z):
        e = emb[tokens]
        if with_z:
            e = jnp.concatenate([e, jnp.broadcast_to(z, (length,) + z.shape)], axis=-1)
        hs = _cell_scan(p, hidden, e, h0, keep, reverse)
        return hs[0 if reverse else -1] if final_only else hs

    def layer(p, emb, h0, z):
        w = gru.cell_weights(p)
        table = emb @ w.kernel_i[:embed] + w.bias_i[None]
        extra = z @ w.kernel_i[embed:] if with_z else None
        return gru.token_gru(table, tokens, w.kernel_h, w.bias_hn, h0, keep, extra,
                             reverse=reverse, final_only=final_only)

    def loss(fn):  # a weighted sum, so every state's gradient differs
        def f(*args):
            out = fn(*args)
            return jnp.sum(out * (weights[0] if final_only else weights)), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))

    (value, out), grads = loss(layer)(cell_params, embedding, h0, z)
    (ref_value, ref_out), ref_grads = loss(reference)(cell_params, embedding, h0, z)
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads, ref_grads)
    if with_z:  # z reaches every step
        assert float(jnp.abs(grads[3]).sum()) > 0


# ------------------------------------------------- the model interface, against NumPy (float64)


def _np(a):
    return np.asarray(a, np.float64)


def _np_gru(p, h, e):
    """flax's GRUCell: r, u gates; n = tanh(W_in e + b_in + r * (W_hn h + b_hn))."""
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    dense = lambda name, v: v @ _np(p[name]["kernel"]) + (  # noqa: E731
        _np(p[name]["bias"]) if "bias" in p[name] else 0.0)
    r = sig(dense("ir", e) + dense("hr", h))
    u = sig(dense("iz", e) + dense("hz", h))
    n = np.tanh(dense("in", e) + r * dense("hn", h))
    return (1.0 - u) * n + u * h


def _np_posterior(p, row):
    """(mean, logvar) of one token row: both GRU directions over the real tokens only."""
    real = [t for t in row if t != PAD_ID]
    emb = _np(p["embed"]["embedding"])
    h_fwd = h_bwd = np.zeros(p["encoder_fwd"]["hn"]["bias"].shape[0])
    for t in real:
        h_fwd = _np_gru(p["encoder_fwd"], h_fwd, emb[t])
    for t in reversed(real):
        h_bwd = _np_gru(p["encoder_bwd"], h_bwd, emb[t])
    h = np.concatenate([h_fwd, h_bwd])
    return (h @ _np(p["mean"]["kernel"]) + _np(p["mean"]["bias"]),
            h @ _np(p["logvar"]["kernel"]) + _np(p["logvar"]["bias"]))


def _np_log_px(p, row, z):
    """sum_t log p(x_t | x_<t, z) over the real tokens (EOS included), teacher forced."""
    emb = _np(p["embed"]["embedding"])
    h = np.tanh(z @ _np(p["z_to_hidden"]["kernel"]) + _np(p["z_to_hidden"]["bias"]))
    prev, total = BOS_ID, 0.0
    for t in row:
        if t == PAD_ID:
            break
        h = _np_gru(p["decoder_cell"], h, np.concatenate([emb[prev], z]))
        logits = h @ _np(p["out"]["kernel"]) + _np(p["out"]["bias"])
        total += logits[t] - np.log(np.sum(np.exp(logits)))
        prev = t
    return total


def test_interface_negative_elbo_matches_a_numpy_computation(tiny):
    from jaxvae.models import interface
    vocab, model, params = tiny
    tokens = jnp.asarray(vocab.encode_batch(WORDS, length=13))
    key = jax.random.key(4)
    terms = jax.jit(lambda p, b, k: interface.elbo_terms(model, p, b, k))(
        params, {"x": tokens}, key)
    eps = _np(jax.random.normal(jax.random.split(key)[0], (len(WORDS), model.latent_dim)))
    for b, row in enumerate(np.asarray(tokens)):
        mean, logvar = _np_posterior(params, row)
        z = mean + np.exp(0.5 * logvar) * eps[b]
        kl = -0.5 * np.sum(1 + logvar - mean ** 2 - np.exp(logvar))
        np.testing.assert_allclose(terms.recon_B[b], -_np_log_px(params, row, z), rtol=1e-4)
        np.testing.assert_allclose(terms.kl_B[b], kl, rtol=1e-4, atol=1e-6)
    # the loss without word dropout, at full KL weight, is this -ELBO
    loss, metrics = losses.make_sequence_loss(model)(params, {"x": tokens}, key, jnp.int32(0))
    np.testing.assert_allclose(loss, jnp.mean(terms.recon_B + terms.kl_B), rtol=1e-6)
    np.testing.assert_allclose(metrics["nelbo"], loss, rtol=1e-6)


def test_log_weights_match_a_numpy_computation_and_the_nll_is_below_the_elbo(tiny):
    from jaxvae.models import interface
    vocab, model, params = tiny
    tokens = jnp.asarray(vocab.encode_batch(WORDS[:2], length=13))
    key = jax.random.key(5)
    terms = interface.log_weight_terms(model, params, {"x": tokens}, key, 3)
    eps = _np(jax.random.normal(key, (3, 2, model.latent_dim)))
    for b, row in enumerate(np.asarray(tokens)):
        mean, logvar = _np_posterior(params, row)
        for k in range(3):
            z = mean + np.exp(0.5 * logvar) * eps[k, b]
            log_q = -0.5 * np.sum((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi))
            log_p = -0.5 * np.sum(z ** 2 + np.log(2 * np.pi))
            np.testing.assert_allclose(terms.log_px[k, b], _np_log_px(params, row, z),
                                       rtol=1e-4)
            np.testing.assert_allclose(terms.log_qz[k, b], log_q, rtol=1e-4)
            np.testing.assert_allclose(terms.log_pz[k, b], log_p, rtol=1e-4)
    import jaxvae
    nll = -jaxvae.log_likelihood(model, params, {"x": tokens}, key, num_samples=200)
    neg_elbo = -jaxvae.elbo(model, params, {"x": tokens}, key, num_samples=200,
                            analytic_kl=False)
    assert np.all(np.asarray(nll) <= np.asarray(neg_elbo))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        jaxvae.log_likelihood(model, params, {"x": tokens + 100}, key, num_samples=2)
    with pytest.raises(ValueError, match="autoregressive"):
        interface.decode(model, params, jnp.zeros((1, model.latent_dim)))


def test_kl_weight_rises_linearly_to_beta_then_stays():
    weights = [float(sequence.kl_weight(jnp.int32(s), 0.5, 100)) for s in (0, 25, 100, 1000)]
    np.testing.assert_allclose(weights, [0.0, 0.125, 0.5, 0.5])
    assert float(sequence.kl_weight(jnp.int32(0), 0.5, 0)) == 0.5


def test_word_dropout_replaces_only_inner_inputs_at_the_rate():
    inputs = jnp.asarray(np.tile([BOS_ID] + [7] * 30 + [PAD_ID] * 9, (200, 1)), jnp.int32)
    out = np.asarray(sequence.word_dropout(jax.random.key(0), inputs, 0.25))
    assert np.all(out[:, 0] == BOS_ID) and np.all(out[:, 31:] == PAD_ID)
    inner = out[:, 1:31]
    assert set(np.unique(inner)) == {UNK_ID, 7}
    assert abs(np.mean(inner == UNK_ID) - 0.25) < 0.02  # 6,000 Bernoulli(0.25): sd 0.0056


@pytest.fixture(scope="module")
def trained(tiny):
    vocab, model, params = tiny
    tx = train.make_optimizer(1e-2)
    loss_fn = losses.make_sequence_loss(model, beta=1.0, warmup_steps=100, word_dropout_rate=0.1)
    epoch = train.make_train_epoch(loss_fn, tx, batch_size=4)
    state = train.create_train_state(params, tx)
    data = {"x": jnp.asarray(vocab.encode_batch(WORDS, length=14))}
    nelbos = []
    for e in range(300):
        state, metrics, _ = epoch(state, data, jax.random.key(e), jax.random.key(1))
        nelbos.append(float(metrics["nelbo"]))
    return vocab, model, state, data, nelbos, epoch


def test_loss_falls_and_the_scan_epoch_compiles_once(trained):
    *_, nelbos, epoch = trained
    assert np.mean(nelbos[-20:]) < 0.3 * nelbos[0], (nelbos[0], nelbos[-20:])
    assert epoch.chunk._cache_size() == 1  # 4 strings, batch 4: one chunk shape


def test_memorised_strings_are_reproduced_greedily(trained):
    vocab, model, state, data, _, _ = trained
    out = sequence.reconstruct(model, state.params, data["x"], max_len=14)
    assert vocab.decode_batch(out) == WORDS
    path = sequence.interpolate(model, state.params, data["x"][0], data["x"][3],
                                steps=4, max_len=14)  # 4 rows: greedy decoding compiled once
    decoded = vocab.decode_batch(path)
    assert decoded[0] == "hello" and decoded[-1] == "variational"


def test_generation_pads_after_eos_and_low_temperature_sampling_is_greedy(trained):
    _, model, state, _, _, _ = trained
    z = jax.random.normal(jax.random.key(5), (4, model.latent_dim))
    greedy = np.asarray(sequence.generate(model, state.params, z, 14))
    cold = sequence.generate(model, state.params, z, 14, key=jax.random.key(0), temperature=1e-4)
    np.testing.assert_array_equal(cold, greedy)
    for row in greedy:
        eos = np.flatnonzero(row == EOS_ID)
        if eos.size:
            assert np.all(row[eos[0] + 1:] == PAD_ID)
    a = sequence.sample(model, state.params, jax.random.key(1), 4, 14, temperature=2.0)
    b = sequence.sample(model, state.params, jax.random.key(1), 4, 14, temperature=2.0)
    c = sequence.sample(model, state.params, jax.random.key(2), 4, 14, temperature=2.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generation_never_emits_pad_bos_or_unk_even_when_they_score_highest(trained):
    _, model, state, _, _, _ = trained
    params = jax.tree.map(lambda p: p, state.params)
    bias = params["out"]["bias"]
    params["out"]["bias"] = bias.at[jnp.array([PAD_ID, BOS_ID, UNK_ID])].set(1e3)
    z = jax.random.normal(jax.random.key(5), (6, model.latent_dim))
    for key in (None, jax.random.key(0)):
        rows = np.asarray(sequence.generate(model, params, z, 14, key=key))
        for row in rows:
            eos = np.flatnonzero(row == EOS_ID)
            body = row[:eos[0]] if eos.size else row
            assert not np.isin(body, [PAD_ID, BOS_ID, UNK_ID]).any(), row
    # without the boost, the masked generation is the argmax over the corpus tokens and EOS
    greedy = np.asarray(sequence.generate(model, state.params, z, 14))
    assert not np.isin(greedy[:, 0], [PAD_ID, BOS_ID, UNK_ID]).any()


def test_bad_arguments_raise_clear_errors(tiny):
    _, model, params = tiny
    with pytest.raises(ValueError, match="word_dropout_rate must be in"):
        losses.make_sequence_loss(model, word_dropout_rate=1.0)
    with pytest.raises(ValueError, match="only the 4 special tokens"):
        sequence.sequence_vae(4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sequence.generate(model, params, jnp.zeros((1, 8)), 5, key=jax.random.key(0),
                          temperature=0.0)


def test_fit_sequences_checks_its_inputs_before_training():
    from jaxvae.training.sequences import SequenceConfig, fit_sequences
    vocab = Vocabulary.from_corpus(WORDS)
    with pytest.raises(ValueError, match="word_dropout must be in"):
        fit_sequences(SequenceConfig(word_dropout=1.0), vocab, WORDS, WORDS)
    with pytest.raises(ValueError, match="batch size 128 is larger than the training set"):
        fit_sequences(SequenceConfig(), vocab, WORDS, WORDS)
    with pytest.raises(ValueError, match="'zebra' is not in the vocabulary"):
        fit_sequences(SequenceConfig(batch_size=2), vocab, WORDS, ["zebra"])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sequence_optimizer_follows_its_learning_rate_schedule(schedule):
    """With a constant gradient Adam's update is lr_t * sign(g) (m / sqrt(v) = 1 after bias
    correction), so the updates trace the schedule: lr, or lr (1 + cos(pi t / T)) / 2."""
    from jaxvae.training.sequences import (SequenceConfig, make_sequence_optimizer,
                                           validate_sequence_config)

    lr, total = 2e-3, 8
    tx = make_sequence_optimizer(SequenceConfig(lr=lr, lr_schedule=schedule), total)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    steps = []
    for _ in range(total):
        updates, state = tx.update({"w": jnp.array([0.3, -0.4])}, state, params)
        steps.append(np.asarray(updates["w"]))
    t = np.arange(total)
    lr_t = lr * (np.ones(total) if schedule == "constant" else (1 + np.cos(np.pi * t / total)) / 2)
    np.testing.assert_allclose(np.stack(steps), lr_t[:, None] * np.array([-1.0, 1.0]),
                               rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        validate_sequence_config(SequenceConfig(lr_schedule="linear"))
    with pytest.raises(ValueError, match="length_buckets must be >= 1"):
        validate_sequence_config(SequenceConfig(length_buckets=0))


def test_words_script_splits_seeded_and_rejects_a_split_larger_than_the_list():
    from experiments import words
    train_words, test_words = words.split_words(WORDS, 3, 1, seed=0)
    assert sorted(train_words + test_words) == sorted(WORDS)
    assert words.split_words(WORDS, 3, 1, seed=0) == (train_words, test_words)
    with pytest.raises(ValueError, match="exceeds the 4 words available"):
        words.split_words(WORDS, 4, 1, seed=0)


@pytest.mark.multidevice  # each length bucket's batches split over the devices
def test_fit_sequences_trains_through_the_training_loop(monkeypatch):
    from jaxvae.training import sequences
    from jaxvae.training.sequences import SequenceConfig, fit_sequences

    made = []  # the learning-rate schedule spans the run: epochs x steps per epoch
    make_optimizer = sequences.train.make_optimizer
    monkeypatch.setattr(sequences.train, "make_optimizer",
                        lambda *a, **k: made.append(k) or make_optimizer(*a, **k))
    # in two length buckets (rows of 3 and of 8 tokens with EOS): two full batches each
    words = ["ab", "bc", "ca", "ba", "abcdefg", "bcdefga", "cdefgab", "defgabc"]
    vocab = Vocabulary.from_corpus(words, "char")
    records = []
    config = SequenceConfig(embed_dim=4, hidden_dim=8, latent_dim=2, epochs=3, batch_size=2,
                            lr=1e-2, lr_schedule="cosine", warmup_steps=0, length_buckets=2)
    fit = fit_sequences(config, vocab, words, words[:2], on_epoch=records.append,
                        length=10)
    assert made == [{"schedule": "cosine", "total_steps": 12}]
    assert fit.history == records and [r["step"] for r in records] == [4, 8, 12]
    assert int(fit.state.step) == 12 and all(r["train_skipped"] == 0 for r in records)
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_nelbo"]) for r in records)


def test_words_script_trains_and_writes_its_results(tmp_path):
    from experiments import words
    outdir = tmp_path / "words"
    assert words.main(["--train-size", "64", "--test-size", "8", "--epochs", "1",
                       "--batch-size", "32", "--embed-dim", "4", "--hidden-dim", "8",
                       "--latent-dim", "2", "--warmup-steps", "1", "--num-samples", "4",
                       "--lr-schedule", "cosine", "--quiet", "--outdir", str(outdir)]) == 0
    results = json.loads((outdir / "results.json").read_text())
    assert results["config"]["lr_schedule"] == "cosine"
    assert results["train_words"] == 64 and results["test_words"] == 8
    assert results["epochs_run"] == 1 and results["steps"] == 2
    assert len(results["interpolation"]["path"]) == 8
    assert len((outdir / "metrics.jsonl").read_text().splitlines()) == 1


def test_free_bits_floor_each_dimension_of_the_batch_mean_kl(tiny):
    vocab, model, params = tiny
    tokens = jnp.asarray(vocab.encode_batch(WORDS, length=13))
    key, step, floor = jax.random.key(2), jnp.int32(5), 0.3
    loss, metrics = losses.make_sequence_loss(model, beta=0.5, warmup_steps=10,
                                              free_bits=floor)(params, {"x": tokens}, key, step)
    terms = model.apply({"params": params}, tokens, key, 0.0,
                        method=sequence.SequenceVAE.elbo_terms_and_logits)[0]
    mean, logvar = sequence.encode(model, params, tokens)
    kl_BxZ = -0.5 * (1 + _np(logvar) - _np(mean) ** 2 - np.exp(_np(logvar)))
    floored = np.sum(np.maximum(floor, kl_BxZ.mean(0)))
    assert np.any(kl_BxZ.mean(0) < floor)  # the floor is active in some dimension
    np.testing.assert_allclose(metrics["kl_free_bits"], floored, rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(terms.recon_B) + 0.5 * 0.5 * floored, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl_BxZ.sum(1).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="free_bits must be a finite number >= 0"):
        losses.make_sequence_loss(model, free_bits=-1.0)


@pytest.mark.parametrize("script", ["words", "molecules", "music"])
@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "error: lr must be >= 0, got -1.0"),
    (["--length-buckets", "0"], "error: length_buckets must be >= 1, got 0"),
])
def test_sequence_scripts_refuse_a_bad_model_flag_before_any_work(script, flags, message,
                                                                  tmp_path, capsys):
    import importlib
    main = importlib.import_module(f"experiments.{script}").main
    assert main(flags + ["--quiet", "--outdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [message]
    assert not (tmp_path / "run").exists()
