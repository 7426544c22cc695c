"""The benchmark harness: its FLOP and byte counts, its roofline, its timing protocol and load
warning, its torch models and estimators, and --quick smoke runs whose JSON is checked for the
documented schema (no speed assertions)."""

import collections
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxvae
from benchmarks import harness, report, run, sections, torch_models, torch_reference, workloads


def test_train_flops_of_the_reference_model_are_3_28_mflop_per_sample():
    # forward 2 * (784*400 + 2*400*20 + 20*400 + 400*784) = 1,302,400; the backward doubles it
    # except the input gradient of the first layer (2 * 784 * 400).
    assert harness.mlp_train_flops(784, (400,), 20) == 3 * 1_302_400 - 2 * 784 * 400 == 3.28e6
    assert harness.mlp_layers(784, (1024, 1024), 64) == [
        (784, 1024), (1024, 1024), (1024, 64), (1024, 64), (64, 1024), (1024, 1024),
        (1024, 784)]


def test_conv_flops_count_convolutions_transposed_convolutions_and_dense_layers():
    # 28x28x1 -> conv 4x4/2 -> 14x14x32 -> conv 4x4/2 -> 7x7x64 = 3136 -> 400 -> 20 (x2);
    # 20 -> 400 -> 3136 -> deconv -> 14x14x32 -> deconv -> 28x28x1
    conv = [2 * 14 * 14 * 32 * 16 * 1, 2 * 7 * 7 * 64 * 16 * 32]
    dense = [2 * 3136 * 400, 2 * 400 * 20, 2 * 400 * 20, 2 * 20 * 400, 2 * 400 * 3136]
    deconv = [2 * 7 * 7 * 64 * 16 * 32, 2 * 14 * 14 * 32 * 16 * 1]
    forward = sum(conv + dense + deconv)
    layers = harness.conv_vae_layers((28, 28, 1), (32, 64), (400,), 20)
    assert [l.flops for l in layers] == conv + dense[:3] + dense[3:] + deconv
    assert harness.train_flops(layers) == 3 * forward - conv[0] == 35_467_904
    assert sum(l.outputs for l in layers) == 6272 + 3136 + 400 + 20 + 20 + 400 + 3136 + 6272 + 784


def test_sequence_flops_count_every_gru_step_and_the_input_gradients():
    v, e, h, z, n, t = 28, 32, 256, 64, 53, 40
    gru = lambda d, steps: 2 * (d * 3 * h + h * 3 * h) * steps  # noqa: E731
    forward = 2 * gru(e, t) + 2 * (2 * 2 * h * z) + 2 * z * h + gru(e + z, n) + 2 * h * v * n
    layers = harness.sequence_vae_layers(v, e, h, z, n, t)
    # the first layer is the embedding: every GRU input gradient is needed (3 x forward)
    assert harness.train_flops(layers) == pytest.approx(3 * forward, rel=1e-12)


def test_nll_flops_count_one_encoding_and_k_decodings():
    encode = 2 * (784 * 400 + 2 * 400 * 20)
    decode = 2 * (20 * 400 + 400 * 784)
    assert harness.mlp_nll_flops(784, (400,), 20, 1000) == encode + 1000 * decode


def test_round_robin_times_warm_up_apart_and_rotates_the_order():
    calls = []
    runners = [harness.Runner("jax", name, lambda n=name: calls.append(n), samples=10, flops=1e9)
               for name in "abc"]
    timings = harness.round_robin(runners, repeats=3, warmup_calls=1)
    first, warm, timed = calls[:6:2], calls[1:6:2], calls[6:]
    assert first == warm == ["a", "b", "c"]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [len(t.seconds) for t in timings] == [3, 3, 3]
    stats = timings[0].stats()
    assert stats["samples_per_s_min"] <= stats["samples_per_s"] <= stats["samples_per_s_max"]
    assert stats["gflops"] == pytest.approx(1.0 / timings[0].median_s)


def test_round_robin_leaves_the_cores_idle_before_every_timed_call():
    spans = []

    def call():
        spans.append(time.perf_counter())
        spans.append(time.perf_counter())

    runners = [harness.Runner("jax", name, call, samples=1, flops=1.0) for name in "ab"]
    harness.round_robin(runners, repeats=3, warmup_calls=0, gap_s=0.02)
    starts, ends = spans[4::2], spans[3:-1:2]  # the timed calls, after two first calls
    assert len(starts) == 6 and all(s - e >= 0.02 for s, e in zip(starts, ends))
    assert harness.QUIET_GAP_S > 0


def test_roofline_of_the_reference_model_matches_a_hand_computation():
    params = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
    counts = workloads.WORKLOADS["reference"].byte_counts(params)
    # Adam: gradient written, p, g, m, v read, p, m, v written: 8 x 4 bytes per parameter
    assert counts.per_step == 32 * 652_824
    # activations: 16 bytes per layer output (400, 20, 20, 400, 784), the input read once
    assert counts.per_sample == 16 * (400 + 20 + 20 + 400 + 784) + 4 * 784 == 29_120
    seconds = 128 * 3.28e6 / 200e9 + (32 * 652_824 + 128 * 29_120) / 20e9  # 3.33 ms a step
    limit = harness.roofline_samples_per_s(128, 3.28e6, counts, gemm_gflops=200.0,
                                           bandwidth_gbs=20.0)
    assert limit == pytest.approx(128 / seconds) and limit == pytest.approx(38_437, abs=1)


def test_stream_kernels_count_stream_bytes_and_compute_copy_and_triad():
    copy, triad = harness.stream_runners(0.25)  # 65,536 float32 elements
    assert (copy.bytes_moved, triad.bytes_moved) == (8 * 65_536, 12 * 65_536)
    timings = harness.round_robin([copy, triad], repeats=2)
    for t in timings:
        stats = t.stats()
        assert stats["gbytes_per_s"] == pytest.approx(t.runner.bytes_moved / t.median_s / 1e9)


def test_load_above_one_per_core_warns_and_is_recorded(monkeypatch):
    runner = harness.Runner("jax", "a", lambda: None, samples=1, flops=1.0)
    logged = []
    monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 1.0, 0.5))
    busy = harness.timed_block("train conv batch 128", [runner], 1, log=logged.append, cores=2)
    assert busy.load_before == busy.load_after == [2.5, 1.0, 0.5]
    assert busy.warning.startswith("WARNING: train conv batch 128: load average 2.50 > 1 per "
                                   "core (2 cores)") and logged[-1] == busy.warning
    assert busy.record("b")["overloaded"]
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 3.0, 3.0))  # the 1-minute value counts
    quiet = harness.timed_block("x", [runner], 1, log=logged.append, cores=2)
    assert quiet.warning is None and not quiet.record("x")["overloaded"]
    summary = report.load_summary([busy.record("b"), quiet.record("x")])
    assert summary["overloaded_blocks"] == ["b"]


@pytest.mark.parametrize("name", ["reference", "wide", "conv", "sequence"])
def test_torch_equivalents_have_jaxvae_parameter_counts(name):
    work = workloads.WORKLOADS[name]
    params = jaxvae.init(work.jax_model(), jax.random.key(0))
    expected = {"reference": 652_824, "wide": 3_904_400,
                # 544 + 32,832 (convs) + 1,254,800 + 2 x 8,020 + 8,400 + 1,257,536 (dense)
                # + 32,800 + 513 (transposed convs)
                "conv": 2_603_465,
                # 28 x 32 embedding, 2 x 222,208 encoder GRUs, 2 x 32,832 heads, 16,640
                # z -> h, 271,360 decoder GRU, 7,196 output layer
                "sequence": 806_172}[name]
    assert workloads.check_parameter_counts(work, params, work.torch_model()) == expected


def test_unequal_parameter_counts_stop_the_benchmark():
    work = workloads.WORKLOADS["reference"]
    params = jaxvae.init(work.jax_model(), jax.random.key(0))
    with pytest.raises(RuntimeError, match="652,824 parameters in jaxvae but 3,904,400"):
        workloads.check_parameter_counts(work, params, workloads.WORKLOADS["wide"].torch_model())


def test_torch_sequence_vae_computes_jaxvae_sequence_vae():
    # Same weights: the packed biGRU equals jaxvae's masked scan, and the teacher-forced logits
    # equal; so the torch rows time the same function.
    from jaxvae.models import sequence
    model = sequence.sequence_vae(10, 4, 8, 3)
    params = jaxvae.init(model, jax.random.key(0))
    net = torch_models.TorchSequenceVAE(10, 4, 8, 3)
    t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    gates = lambda cell, kind: np.concatenate(  # noqa: E731
        [cell[g]["kernel"] for g in (kind + "r", kind + "z", kind + "n")], axis=1).T
    flat = []
    for cell in (params["encoder_fwd"], params["encoder_bwd"]):
        flat += [gates(cell, "i"), gates(cell, "h"),
                 np.concatenate([cell[g]["bias"] for g in ("ir", "iz", "in")]), cell["hn"]["bias"]]
    cell = params["decoder_cell"]
    dec = [gates(cell, "i"), gates(cell, "h"),
           np.concatenate([cell[g]["bias"] for g in ("ir", "iz", "in")]), cell["hn"]["bias"]]
    with torch.no_grad():
        for p, value in zip(list(net.encoder.directions) + list(net.decoder.directions),
                            flat + dec):
            p.copy_(t(value))
        net.embed.weight.copy_(t(params["embed"]["embedding"]))
        for layer, name in ((net.fc_mu, "mean"), (net.fc_logvar, "logvar"),
                            (net.z_to_hidden, "z_to_hidden"), (net.out, "out")):
            layer.weight.copy_(t(params[name]["kernel"]).T)
            layer.bias.copy_(t(params[name]["bias"]))
    tokens = workloads.token_rows(5, 7, 10, seed=1)
    assert (tokens == 0).any()  # some rows padded
    mean, logvar = sequence.encode(model, params, tokens)
    z = np.asarray(mean)
    logits = sequence.teacher_forced_logits(model, params, z, sequence.decoder_inputs(tokens))
    with torch.no_grad():
        t_mean, t_logvar = net.encode(t(tokens).long())
        t_logits = net.logits(t(z), t(tokens).long())
    np.testing.assert_allclose(t_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t_logvar.numpy(), logvar, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t_logits.numpy(), logits, rtol=1e-4, atol=1e-5)


def test_token_rows_end_with_eos_then_padding():
    from jaxvae.data.vocab import EOS_ID, PAD_ID
    rows = workloads.token_rows(200, 53, 28)
    tokens = (rows != PAD_ID).sum(1)
    assert tokens.min() >= 26 and tokens.max() <= 53
    assert tokens.mean() == pytest.approx(workloads.mean_tokens(53), abs=1.5)
    assert (rows[np.arange(200), tokens - 1] == EOS_ID).all()
    assert ((rows == EOS_ID).sum(1) == 1).all() and rows.min() >= 0 and rows.max() < 28


def test_generic_torch_vae_computes_the_reference_formulas():
    torch.manual_seed(0)
    ref = torch_reference.TorchVAE()
    gen = torch_reference.TorchMLPVAE(784, (400,), 20)
    names = {"fc1": "enc.0", "fc21": "fc_mu", "fc22": "fc_logvar", "fc3": "dec.0", "fc4": "out"}
    gen.load_state_dict({k.replace(k.split(".")[0], names[k.split(".")[0]], 1): v
                         for k, v in ref.state_dict().items()})
    x = torch.rand(5, 784)
    eps = torch.randn(5, 20)
    for a, b in zip(ref(x, eps), gen(x, eps)):
        torch.testing.assert_close(a, b)


def test_torch_log_likelihood_estimators_compute_the_importance_weights(monkeypatch):
    # With eps = 0 every z is the posterior mean, every log w_k the same number, and the
    # estimate must equal log p(x | mu) + log p(mu) - log q(mu | x) computed by jaxvae.
    torch.manual_seed(0)
    net = torch_reference.TorchVAE()
    model = jaxvae.reference_vae()
    params = jaxvae.from_torch(model, net.state_dict())
    x = (np.random.default_rng(0).uniform(size=(3, 784)) > 0.5).astype(np.float32)
    mean, logvar = jaxvae.encode(model, params, x)
    expected = (-jaxvae.bernoulli_nll(jaxvae.decode(model, params, mean), x)
                + jaxvae.distributions.standard_normal_log_prob(mean)
                - jaxvae.distributions.gaussian_log_prob(mean, mean, logvar))
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    loop = torch_reference.per_example_log_likelihood(net, torch.from_numpy(x), 300, 100)
    batched = torch_reference.batched_log_likelihood(net, torch.from_numpy(x), 300, 50)
    np.testing.assert_allclose(loop.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(batched.numpy(), expected, rtol=1e-5)


def test_a_timed_call_runs_the_work_of_call_gflop_but_at_least_min_steps_steps():
    # the reference MLP at batch 128: 3.28 MFLOP a sample, 12 GFLOP are 28.6 steps
    assert sections.steps_per_call(12.0, 8, 3.28e6, 128) == 29
    # the conv VAE at batch 512 (18 GFLOP a step) and the MLP at 8192: the floor
    assert sections.steps_per_call(12.0, 8, 35.47e6, 512) == 8
    assert sections.steps_per_call(12.0, 8, 3.28e6, 8192) == 8
    # never more examples than MAX_SAMPLES_PER_CALL, never fewer than one step
    assert sections.steps_per_call(12.0, 32, 3.28e6, 8192) == sections.MAX_SAMPLES_PER_CALL // 8192
    assert sections.steps_per_call(0.001, 1, 3.28e6, 1 << 20) == 1


def test_bad_arguments_stop_with_a_clear_message(capsys, tmp_path):
    assert run.main(["--quick", "--repeats", "0", "--outdir", str(tmp_path)]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert run.main(["--quick", "--fit-epochs", "1", "--outdir", str(tmp_path)]) == 2
    assert "first is a warm-up" in capsys.readouterr().err
    assert run.main(["--quick", "--device", "tpu", "--outdir", str(tmp_path)]) == 2
    assert "--device tpu: jax cannot use that backend here" in capsys.readouterr().err
    assert run.main(["--quick", "--min-steps", "0", "--outdir", str(tmp_path)]) == 2
    assert "--min-steps must be >= 1" in capsys.readouterr().err
    assert run.main(["--quick", "--stream-mb", "0", "--outdir", str(tmp_path)]) == 2
    assert "--stream-mb must be > 0" in capsys.readouterr().err
    assert run.main(["--quick", "--models", "conv", "--conv-batch-sizes", "0",
                     "--outdir", str(tmp_path)]) == 2
    assert "batch sizes of the conv model must be >= 1" in capsys.readouterr().err
    assert run.main(["--quick", "--precisions", "float16", "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --precisions: unknown precision 'float16'; choose from float32 "
                   "bfloat16\n")
    assert run.main(["--quick", "--max-minutes", "-1", "--outdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: --max-minutes must be a finite number >= 0, "
                                       "got -1.0\n")


def test_the_harness_knows_the_precisions_of_the_models():
    from jaxvae.models import precision
    assert sections.PRECISIONS == precision.PRECISIONS


def test_nll_chunks_tile_k_exactly():
    assert sections.largest_divisor(1000, 512) == 500
    assert sections.largest_divisor(5000, 2730) == 2500
    assert sections.largest_divisor(7, 3) == 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--batch-sizes", "32", "--call-gflop", "0.02", "--repeats", "1",
            "--gemm-size", "128", "--stream-mb", "1", "--nll-samples", "20", "--nll-gflop", "0.01",
            "--fit-examples", "256", "--torch-threads", "1",
            "--outdir", str(outdir), "--json", str(outdir / "copy.json")]
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    assert run.main(argv) == 0
    # main() may run inside a larger program: torch's global settings come back as they were
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    return outdir


def test_quick_run_writes_json_markdown_and_plot(quick_run):
    result = json.loads((quick_run / "results.json").read_text())
    assert json.loads((quick_run / "copy.json").read_text()) == result
    assert (quick_run / "throughput.png").stat().st_size > 0
    table = (quick_run / "results.md").read_text()
    assert "| reference | 32 | jax scan_epoch |" in table
    for key in ("cpu", "cpu_count", "backend", "device_kind", "num_local_devices"):
        assert key in result["machine"]
    assert {"jax", "flax", "optax", "torch", "jaxvae"} <= set(result["versions"])
    assert result["versions"]["torch_num_threads"] == 1  # --torch-threads 1
    assert result["settings"]["command"].startswith("python -m benchmarks.run --quick")


def test_quick_run_rows_follow_the_schema(quick_run):
    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    train = {(r["framework"], r["method"]) for r in rows if r["benchmark"] == "train"}
    assert train == {("torch", "eager"), ("jax", "jit_step"), ("jax", "scan_epoch"),
                     ("jax", "pmap"), ("jax", "sharded")}  # --quick skips torch.compile
    assert {(r["framework"], r["method"]) for r in rows if r["benchmark"] == "fit_mnist5k"} == {
        ("torch", "reference_loop"), ("jax", "fit")}
    assert {(r["framework"], r["method"]) for r in rows if r["benchmark"] == "nll_k20"} == {
        ("jax", "vectorized"), ("torch", "per_example_loop"), ("torch", "batched")}
    for r in rows:
        assert r["framework"] in ("jax", "torch") and r["device"] == "cpu"
        assert r["model"] == "reference"
        assert isinstance(r["batch_size"], int)
        assert 0 < r["samples_per_s_min"] <= r["samples_per_s"] <= r["samples_per_s_max"]
        assert r["compile_s"] >= 0 and r["gflops"] > 0
        assert len(r["load_before"]) == len(r["load_after"]) == 3
        if r["benchmark"] == "train":
            assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / r["gemm_gflops"])
            assert r["roofline_samples_per_s"] == pytest.approx(harness.roofline_samples_per_s(
                32, 3.28e6, harness.ByteCounts(r["bytes_per_step"], r["bytes_per_sample"]),
                r["gemm_gflops"], r["stream_triad_gbs"]))
            assert r["pct_of_roofline"] == pytest.approx(
                100 * r["samples_per_s"] / r["roofline_samples_per_s"])
            assert r["stream_copy_gbs"] > 0 and r["num_params"] == 652_824
            assert r["flops_per_sample"] == 3.28e6
            if r["framework"] == "jax":
                # XLA counts every op of the step; the formula its matmuls. Adam's ~20 FLOP per
                # parameter, shared by 32 examples, is the bulk of the difference.
                params = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
                assert 3.28e6 <= r["xla_flops_per_sample"] <= 3.28e6 * 1.02 + 20 * params / 32
            assert r["vs_torch_eager"] == pytest.approx(
                r["samples_per_s"] / next(t["samples_per_s"] for t in rows
                                          if t["benchmark"] == "train"
                                          and t["method"] == "eager"))
    pmap = next(r for r in rows if r["method"] == "pmap")
    assert pmap["num_devices"] == jax.local_device_count() == 4
    nll = [r for r in rows if r["benchmark"] == "nll_k20"]
    means = [r["mean_log_px"] for r in nll]
    assert max(means) - min(means) < 5.0  # the same model, evaluated three ways


@pytest.fixture(scope="module")
def quick_run_conv_sequence(tmp_path_factory):
    """--quick with the conv and sequence models at batch 8, on a machine made to look busy."""
    outdir = tmp_path_factory.mktemp("bench_models")
    argv = ["--quick", "--models", "conv", "sequence", "--conv-batch-sizes", "8",
            "--sequence-batch-sizes", "8", "--methods", "eager", "jit_step",
            "--call-gflop", "0.001", "--repeats", "1", "--gemm-size", "64", "--stream-mb", "1",
            "--fit-epochs", "0", "--nll-samples", "--torch-threads", "1",
            "--outdir", str(outdir)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "getloadavg", lambda: (4.0 * (os.cpu_count() or 1), 1.0, 1.0))
        assert run.main(argv) == 0
    return outdir


def test_quick_run_trains_the_conv_and_sequence_models_against_torch(quick_run_conv_sequence):
    result = json.loads((quick_run_conv_sequence / "results.json").read_text())
    rows = result["rows"]
    assert {(r["model"], r["framework"], r["method"]) for r in rows} == {
        (m, f, k) for m in ("conv", "sequence") for f, k in (("torch", "eager"),
                                                             ("jax", "jit_step"))}
    params = {"conv": 2_603_465, "sequence": 806_172}
    for r in rows:
        assert r["benchmark"] == "train" and r["batch_size"] == 8
        assert r["num_params"] == params[r["model"]]
        assert r["flops_per_sample"] == workloads.WORKLOADS[r["model"]].flops_per_sample()
        assert 0 < r["pct_of_roofline"] == pytest.approx(
            100 * r["samples_per_s"] / r["roofline_samples_per_s"])
    table = (quick_run_conv_sequence / "results.md").read_text()
    assert "| conv | 8 | jax jit_step |" in table and "| sequence | 8 | torch eager |" in table
    assert "| conv | 2,603,465 | 8 | 35.47 |" in table  # the roofline table


def test_a_busy_machine_is_flagged_in_the_json_and_the_table(quick_run_conv_sequence):
    result = json.loads((quick_run_conv_sequence / "results.json").read_text())
    assert result["load"]["overloaded_blocks"] == ["train conv batch 8", "train sequence batch 8"]
    assert all(b["overloaded"] for b in result["load"]["blocks"])
    assert any(n.startswith("WARNING: train conv batch 8: load average") for n in result["notes"])
    assert "**WARNING: the load average was above 1 per core" in (
        quick_run_conv_sequence / "results.md").read_text()


@pytest.fixture(scope="module")
def quick_run_precisions(tmp_path_factory):
    """--quick in float32 and bfloat16: the reference model at batch 32, eager and jit_step;
    batch 64 and the conv model are asked for too, but the budget of 0 minutes lets only the
    first block run."""
    outdir = tmp_path_factory.mktemp("bench_precisions")
    argv = ["--quick", "--precisions", "float32", "bfloat16", "--batch-sizes", "32", "64",
            "--models", "reference", "conv", "--conv-batch-sizes", "8", "--max-minutes", "0",
            "--methods", "eager", "jit_step", "--call-gflop", "0.02", "--repeats", "1",
            "--gemm-size", "128", "--stream-mb", "1", "--fit-epochs", "0", "--nll-samples",
            "--torch-threads", "1", "--outdir", str(outdir)]
    assert run.main(argv) == 0
    return outdir


def test_quick_run_trains_both_precisions_in_both_frameworks(quick_run_precisions):
    result = json.loads((quick_run_precisions / "results.json").read_text())
    rows = result["rows"]
    assert result["settings"]["precisions"] == ["float32", "bfloat16"]
    assert {(r["framework"], r["method"], r["precision"]) for r in rows} == {
        (f, m, p) for f, m in (("torch", "eager"), ("jax", "jit_step"))
        for p in ("float32", "bfloat16")}
    by = {(r["framework"], r["precision"]): r for r in rows}
    for (framework, precision), r in by.items():
        assert r["benchmark"] == "train" and r["batch_size"] == 32
        assert r["num_params"] == 652_824 and r["flops_per_sample"] == 3.28e6
        # every ratio compares rows of one precision, from the same rounds
        torch_eager = by[("torch", precision)]["samples_per_s"]
        assert r["vs_torch_eager"] == pytest.approx(r["samples_per_s"] / torch_eager)
        assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / r["gemm_gflops"])
        if precision == "bfloat16":
            assert r["vs_float32"] == pytest.approx(
                r["samples_per_s"] / by[(framework, "float32")]["samples_per_s"])
        else:
            assert "vs_float32" not in r
    # each precision's % peak is against the GEMM of its precision, timed in the same rounds
    assert by[("jax", "float32")]["gemm_gflops"] == by[("torch", "float32")]["gemm_gflops"]
    assert by[("jax", "bfloat16")]["gemm_gflops"] == by[("torch", "bfloat16")]["gemm_gflops"]
    assert by[("jax", "bfloat16")]["gemm_gflops"] != by[("jax", "float32")]["gemm_gflops"]
    # the targets are float32 targets
    assert {t["target"] for t in result["targets"]} == {
        "reference batch 32: best jax (jit_step) / torch eager"}


def test_a_spent_budget_skips_the_later_blocks_and_names_them(quick_run_precisions):
    result = json.loads((quick_run_precisions / "results.json").read_text())
    assert {r["batch_size"] for r in result["rows"]} == {32}  # the first block only
    table = (quick_run_precisions / "results.md").read_text()
    for name in ("train reference batch 64", "train conv batch 8"):
        note = f"skipped {name}: the --max-minutes budget was spent"
        assert note in result["notes"] and note in table
    assert result["settings"]["max_minutes"] == 0


def test_the_precision_table_shows_each_rows_precision_and_the_speedup(quick_run_precisions):
    table = (quick_run_precisions / "results.md").read_text()
    assert "| model | batch | precision | method | samples/s |" in table
    assert "| reference | 32 | bfloat16 | jax jit_step |" in table
    assert "| reference | 32 | float32 | torch eager |" in table
    line = next(l for l in table.splitlines() if l.startswith("bfloat16 / float32"))
    assert line.startswith("bfloat16 / float32 samples/s, reference batch 32 (same rounds): ")
    assert "torch eager " in line and "jax jit_step " in line
    assert "| reference | 652,824 | 32 | bfloat16 | 3.28 |" in table  # the roofline table
    result = json.loads((quick_run_precisions / "results.json").read_text())
    result["rows"] = [r for r in result["rows"] if r["precision"] == "bfloat16"]
    assert "| reference | 32 | bfloat16 | jax jit_step |" in report.markdown(result)


def test_a_float32_run_has_no_precision_column(quick_run):
    table = (quick_run / "results.md").read_text()
    assert "| model | batch | method | samples/s |" in table and "bfloat16" not in table
    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    assert {r["precision"] for r in rows if r["benchmark"] == "train"} == {"float32"}


def test_bf16_dots_times_the_three_products_of_a_layer_in_both_precisions(capsys):
    from benchmarks import bf16_dots
    assert bf16_dots.main(["--batch", "8", "--in-features", "16", "--out-features", "4",
                           "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    for name in bf16_dots.PRODUCTS:
        assert f"| {name} | float32 |" in table and f"| {name} | bfloat16 |" in table
    assert bf16_dots.upcast("%c = f32[8,16]{1,0} convert(%b)", "bfloat16")
    assert not bf16_dots.upcast("%c = bf16[8,16]{1,0} convert(%b)", "bfloat16")
    assert not bf16_dots.upcast("%c = f32[8,16]{1,0} convert(%b)", "float32")
    assert bf16_dots.main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err == "error: --rounds must be >= 1, got 0\n"


def _products_of_the_jaxpr(fn, *args) -> collections.Counter:
    """(contraction length, sorted output dims) of every dot_general ``fn`` traces, nested
    jaxprs (conditionals, custom derivatives) included."""
    from jax.extend import core as jax_core
    found = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lc, rc), _ = eqn.params["dimension_numbers"]
                a, b = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
                out = [d for i, d in enumerate(a) if i not in lc]
                out += [d for i, d in enumerate(b) if i not in rc]
                found[(int(np.prod([a[i] for i in lc])), tuple(sorted(out)))] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax_core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_layer_products_lists_every_product_of_the_conv_vaes_step(capsys):
    # The rows are the products JAX traces for the conv VAE's float32 gradient, one for one, and
    # their FLOPs the harness's credited training FLOPs plus the transposed convolution's border
    # (by phases it multiplies over (H + 1) x (W + 1) patches of its H x W input).
    from benchmarks import harness, layer_products, workloads
    batch = 3
    rows = layer_products.conv_products(batch)
    want = collections.Counter()
    for r in rows:
        (lc, rc), a, b = r["dims"], r["lhs"], r["rhs"]
        assert a[lc] == b[rc]
        want[(a[lc], tuple(sorted((a[1 - lc], b[1 - rc]))))] += 1
    work = workloads.WORKLOADS["conv"]
    model = work.jax_model("float32")
    params = jax.eval_shape(lambda: jaxvae.init(model, jax.random.key(0)))  # shapes only
    x = jnp.zeros((batch, 784))
    grad = jax.grad(lambda p: jaxvae.loss(model, p, x, jax.random.key(1))[0])
    assert _products_of_the_jaxpr(grad, params) == want
    layers = harness.conv_vae_layers((28, 28, 1), work.channels, work.hidden, work.latent_dim)
    deconv_0 = layers[-2].flops  # 7x7x64 -> 14x14x32
    border = 3 * deconv_0 * (8 * 8 / (7 * 7) - 1)
    assert sum(r["flops"] for r in rows) == pytest.approx(
        batch * (harness.train_flops(layers) + border), rel=1e-12)
    assert layer_products.main(["--model", "conv", "--batch", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "| conv_1 | patches grad: (512, 64) . (64, 98), contracting axes (1, 0) |" in out
    assert "| all, batch 2 |" in out


def test_layer_products_times_every_product_of_a_step_in_both_libraries(capsys):
    from benchmarks import layer_products
    layers = layer_products.model_layers("reference")
    assert layers == [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]
    products = layer_products.products(layers)
    assert len(products) == 3 * len(layers) - 1  # the data layer has no input gradient
    assert (0, "input grad", (784, 400)) not in products
    rng = np.random.default_rng(0)
    x, w, dy = (rng.standard_normal(s, np.float32) for s in ((5, 3), (3, 4), (5, 4)))
    arrays = {"x": x, "w": w, "dy": dy}
    expected = {"forward": x @ w, "input grad": dy @ w.T, "weight grad": x.T @ dy}
    for name, (lhs, rhs, dims) in layer_products.PRODUCTS.items():
        got = layer_products._torch_product(torch.from_numpy(arrays[lhs]),
                                            torch.from_numpy(arrays[rhs]), dims)()
        np.testing.assert_allclose(got.numpy(), expected[name], rtol=1e-5, atol=1e-6)
        got = jax.lax.dot_general(arrays[lhs], arrays[rhs], (dims, ((), ())))
        np.testing.assert_allclose(np.asarray(got), expected[name], rtol=1e-5, atol=1e-6)
    threads = torch.get_num_threads()
    assert layer_products.main(["--batch", "4", "--rounds", "1", "--torch-threads", "2"]) == 0
    assert torch.get_num_threads() == threads  # the process's setting is restored
    out = capsys.readouterr().out
    assert "| 4 (400 -> 784) | weight grad |" in out and "| all, batch 4 |" in out
    assert layer_products.main(["--batch", "0"]) == 2
    assert capsys.readouterr().err == "error: --batch must be >= 1, got 0\n"
