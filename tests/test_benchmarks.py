"""The benchmark harness: its FLOP counts, its timing protocol, its torch estimators, and a
--quick smoke run whose JSON is checked for the documented schema (no speed assertions)."""

import json

import jax
import numpy as np
import pytest
import torch

import jaxvae
from benchmarks import harness, run, sections, torch_reference


def test_train_flops_of_the_reference_model_are_3_28_mflop_per_sample():
    # forward 2 * (784*400 + 2*400*20 + 20*400 + 400*784) = 1,302,400; the backward doubles it
    # except the input gradient of the first layer (2 * 784 * 400).
    assert harness.mlp_train_flops(784, (400,), 20) == 3 * 1_302_400 - 2 * 784 * 400 == 3.28e6
    assert harness.mlp_layers(784, (1024, 1024), 64) == [
        (784, 1024), (1024, 1024), (1024, 64), (1024, 64), (64, 1024), (1024, 1024),
        (1024, 784)]


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


def test_bad_arguments_stop_with_a_clear_message(capsys, tmp_path):
    assert run.main(["--quick", "--repeats", "0", "--outdir", str(tmp_path)]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert run.main(["--quick", "--fit-epochs", "1", "--outdir", str(tmp_path)]) == 2
    assert "first is a warm-up" in capsys.readouterr().err
    assert run.main(["--quick", "--device", "tpu", "--outdir", str(tmp_path)]) == 2
    assert "--device tpu: jax cannot use that backend here" in capsys.readouterr().err


def test_nll_chunks_tile_k_exactly():
    assert sections.largest_divisor(1000, 512) == 500
    assert sections.largest_divisor(5000, 2730) == 2500
    assert sections.largest_divisor(7, 3) == 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--batch-sizes", "32", "--call-gflop", "0.02", "--repeats", "1",
            "--gemm-size", "128", "--nll-samples", "20", "--nll-gflop", "0.01",
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
        if r["benchmark"] == "train":
            assert r["pct_of_peak"] == pytest.approx(100 * r["gflops"] / r["gemm_gflops"])
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
