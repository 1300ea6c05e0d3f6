"""The fast paths compute what the plain reference computes: the fast scans of the
recurrent layers against the plain loops of nn/plain.py (log-probabilities and every
parameter's gradient, fp32, max relative difference 1e-5)."""

import pytest
import torch

from pixelexp.models import build_model, set_impl

# Every equivalence check also runs on a GPU when there is one (scripts/device_check.sh).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def log_prob_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    lp = model.log_prob(x)
    lp.sum().backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for n, p in model.named_parameters()}
    return lp.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:  # an unused, empty parameter (no conditioning)
        return 0.0
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name,shape,levels,extra", [
    ("diagonal_bilstm", (1, 12, 10), 2, {}),
    ("diagonal_bilstm", (3, 6, 7), 16, {"use_skip": True}),
    ("diagonal_bilstm", (1, 9, 9), 2, {"use_residual": False}),
    ("row_lstm", (1, 12, 10), 2, {}),
    ("row_lstm", (3, 6, 7), 16, {"use_skip": True}),
    ("multiscale_pixel_rnn", (1, 12, 12), 2, {}),
])
@pytest.mark.parametrize("device", DEVICES)
def test_fast_scan_matches_the_plain_loop(name, shape, levels, extra, device):
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    model = build_model(name, image_shape=shape, levels=levels, hidden_dims=8, recurrent_length=3,
                        out_hidden_dims=16, **extra).to(device)
    with torch.no_grad():  # larger weights than at initialisation: gates away from 0.5
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.randint(0, levels, (4, *shape), device=device)
    lp_fast, g_fast = log_prob_and_grads(set_impl(model, "fast"), x)
    lp_plain, g_plain = log_prob_and_grads(set_impl(model, "plain"), x)
    assert rel(lp_fast, lp_plain) < 1e-5
    for k in g_plain:
        assert rel(g_fast[k], g_plain[k]) < 1e-5, k
    assert any(g.abs().sum() > 0 for g in g_plain.values())


@pytest.mark.parametrize("device", DEVICES)
def test_the_hand_written_scan_backward_is_the_derivative(device):
    """gradcheck in float64: the scan's backward against finite differences, for the
    input gates and the state weights, with a state table read unevenly."""
    from pixelexp.nn.kernels.scan import diagonal_scan
    torch.manual_seed(0)
    B, H, W, hd = 2, 3, 4, 3
    P = W + H - 1
    x_gates = torch.randn(2, P, B * H, 4 * hd, dtype=torch.float64, device=device, requires_grad=True)
    w_state = (0.5 * torch.randn(2, 2 * hd, 4 * hd, dtype=torch.float64, device=device)).requires_grad_()
    weights = torch.randn(2 * P * B * H + 1, hd, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda g, w: (diagonal_scan(g, w, H) * weights).sum(), (x_gates, w_state))


@pytest.mark.parametrize("rows,chunk,blocks", [(12, 3, 4), (12, 5, 2), (7, 2, 1), (6, 1024, 1)])
def test_the_state_weight_gradient_in_blocks_of_rows_is_the_full_sum(rows, chunk, blocks):
    """sum over (step, row) of z^T dg, however the rows are cut into blocks."""
    from pixelexp.nn.kernels import scan
    torch.manual_seed(0)
    zs, dg = torch.randn(2, 5, rows, 6, dtype=torch.float64), torch.randn(2, 5, rows, 12, dtype=torch.float64)
    calls = []
    bmm = torch.bmm
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "bmm", lambda a, b: calls.append(a.shape[0]) or bmm(a, b))
        got = scan.state_weight_grad(zs, dg, chunk)
    assert calls == [2 * 5 * blocks]
    assert torch.allclose(got, torch.einsum("dprk,dprg->dkg", zs, dg), rtol=1e-12, atol=1e-12)


def test_the_scan_cell_functions_compile_whole_and_match_eager():
    """What train.compile compiles for the Diagonal BiLSTM (on a GPU, one kernel per diagonal
    and pass): each cell function is one graph (fullgraph: no graph break, which would split
    it into several kernels) and computes what the eager one does."""
    from pixelexp.nn.kernels.scan import cell_backward, cell_forward
    torch.manual_seed(0)
    B, H, hd = 3, 5, 16
    g, c = torch.randn(2, B * H, 4 * hd), torch.randn(2, B * H, hd)
    grads = torch.randn(2, B * H, hd), torch.randn(2, B * H, 2 * hd), torch.randn(2, B * H, hd)
    torch._dynamo.reset()
    compiled = [torch.compile(f, dynamic=False, fullgraph=True) for f in (cell_forward, cell_backward)]
    fwd = [cell_forward(g, c, H), compiled[0](g, c, H)]
    bwd = [f(*grads, out[2], c, out[3], H) for f, out in zip((cell_backward, compiled[1]), fwd)]
    for eager, comp in (fwd, bwd):
        for e, k in zip(eager, comp):
            assert torch.allclose(e, k, rtol=1e-5, atol=1e-6), (e - k).abs().max()


def test_the_skew_gathers_are_the_skew_and_unskew():
    """diagonal_indices reads what nn.shifts.skew / unskew move, both directions."""
    from pixelexp.nn.kernels.scan import diagonal_indices
    from pixelexp.nn.shifts import skew, unskew
    B, H, W = 2, 5, 3
    P, N = W + H - 1, B * H * W
    idx = diagonal_indices(B, H, W, torch.device("cpu"))
    pixel_ids = torch.arange(1, N + 1, dtype=torch.float64).view(B, 1, H, W)  # 0 marks "off the image"
    table = torch.cat([torch.stack([pixel_ids.flatten()] * 2, 1).flatten(), torch.zeros(2)])  # rows (pixel, dir)
    got = table[idx.gates].view(2, P, B, H)
    for d, img in enumerate([pixel_ids, pixel_ids.flip(-1)]):
        assert torch.equal(got[d], skew(img)[:, 0].permute(2, 0, 1)), d
    states = torch.randn(2, P, B, H)
    flat = torch.cat([states.flatten(), torch.zeros(1)])
    y = flat[idx.states].view(B, H, W, 2)
    fw = unskew(states[0].permute(1, 2, 0)[:, None], W)[:, 0]  # (B, H, W)
    bw = unskew(states[1].permute(1, 2, 0)[:, None], W)[:, 0].flip(-1)
    assert torch.equal(y[..., 0], fw)
    assert torch.equal(y[:, 1:, :, 1], bw[:, :-1]) and not y[:, 0, :, 1].any()  # shifted down a row

    # Their backward is a gather as well: the same gradients as index_select's (which adds,
    # with atomics on a GPU), except in the constant zero rows, which get none.
    from pixelexp.nn.kernels.scan import gather_rows
    for idx_, inv, zero_rows in ((idx.gates, idx.gates_inv, 2), (idx.states, idx.states_inv, 1)):
        src = torch.randn(len(inv), 3, dtype=torch.float64, requires_grad=True)
        up = torch.randn(len(idx_), 3, dtype=torch.float64)
        (g_ours,) = torch.autograd.grad((gather_rows(src, idx_, inv) * up).sum(), src)
        (g_ref,) = torch.autograd.grad((src.index_select(0, idx_) * up).sum(), src)
        assert torch.equal(g_ours[:-zero_rows], g_ref[:-zero_rows]) and not g_ours[-zero_rows:].any()


TRITON_CHECK = """
import torch
from pixelexp.models import build_model, set_impl
from pixelexp.nn.kernels.scan import diagonal_scan
from pixelexp.nn.kernels.triton_scan import available, triton_diagonal_scan
dev = torch.device("DEVICE")
assert available(16, dev)
torch.manual_seed(0)
rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
B, H, W, hd = 2, 5, 4, 16
P = W + H - 1
xg = torch.randn(2, P, B * H, 4 * hd, device=dev, requires_grad=True)
ws = (0.3 * torch.randn(2, 2 * hd, 4 * hd, device=dev)).requires_grad_()
up = torch.randn(2 * P * B * H + 1, hd, device=dev)
outs = []
for scan in (triton_diagonal_scan, diagonal_scan):
    xg.grad = ws.grad = None
    table = scan(xg, ws, H)
    (table * up).sum().backward()
    outs.append((table.detach(), xg.grad.clone(), ws.grad.clone()))
for a, b in zip(*outs):
    assert rel(a, b) < 1e-5, rel(a, b)
# The whole model: log-probabilities and every gradient against the plain loop.
model = build_model("diagonal_bilstm", image_shape=(1, 6, 5), levels=2, hidden_dims=16, recurrent_length=2,
                    out_hidden_dims=8).to(dev)
x = torch.randint(0, 2, (3, 1, 6, 5), device=dev)
got = []
for impl in ("triton", "plain"):
    set_impl(model, impl)
    model.zero_grad()
    lp = model.log_prob(x)
    lp.sum().backward()
    got.append([lp.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None and p.numel()])
for a, b in zip(*got):
    assert rel(a, b) < 1e-5, rel(a, b)
print("ok")
"""


@pytest.mark.parametrize("device", DEVICES)
def test_the_triton_scan_computes_what_the_pytorch_scan_does(device):
    """model.impl=triton: the two Triton kernels (forward, backward) against the PyTorch
    scan and the whole model against the plain loop (fp32, 1e-5). On a CPU they run in
    Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported: a subprocess)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK.replace("DEVICE", device)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_impl_tag_says_what_runs(monkeypatch):
    """MLflow's pixelexp.impl: model.impl=triton where its kernels cannot run is the fast scan."""
    from pixelexp.config import load_config
    from pixelexp.engine.build import effective_impl
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert effective_impl(load_config(None, ["model.impl=fast"]), cpu) == "fast"
    assert effective_impl(load_config(None, ["model.impl=triton"]), cpu) == \
        "fast (model.impl=triton: the device is cpu, not CUDA)"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert effective_impl(load_config(None, ["model.impl=triton"]), cpu) == "triton"


def test_the_plain_loop_is_a_different_computation():
    """The check can fail: the plain loop without the down-shift of the right-to-left
    direction (the TensorFlow reference's leak) gives other log-probabilities."""
    from pixelexp.nn.kernels import plain
    torch.manual_seed(0)
    model = build_model("diagonal_bilstm", image_shape=(1, 8, 8), levels=2, hidden_dims=4, recurrent_length=2)
    x = torch.randint(0, 2, (2, 1, 8, 8))
    fast = model.log_prob(x)
    original = plain.down_shift
    try:
        plain.down_shift = lambda t: t
        leaky = set_impl(model, "plain").log_prob(x)
    finally:
        plain.down_shift = original
    assert rel(leaky, fast) > 1e-3


@pytest.mark.parametrize("name", ["pixel_cnn", "gated_pixel_cnn"])
@pytest.mark.parametrize("shape,levels,extra", [
    ((1, 10, 9), 2, {}),
    ((3, 6, 5), 4, {"use_skip": True}),
    ((1, 8, 8), 2, {"use_residual": False}),
    ((3, 5, 5), 4, {"use_residual": False, "use_skip": True}),
    ((3, 5, 5), 256, {}),
])
@pytest.mark.parametrize("device", DEVICES)
def test_cached_cnn_samplers_draw_the_naive_samplers_images(name, shape, levels, extra, device):
    torch.manual_seed(0)
    model = build_model(name, image_shape=shape, levels=levels, hidden_dims=12, recurrent_length=3,
                        out_hidden_dims=8, **extra).to(device)
    with torch.no_grad():  # larger weights than at initialization, where every logit is near 0 and a
        for p in model.parameters():  # sampler that gets a term wrong would still draw the same images
            p.mul_(3)
    fast = model.sample(6, generator=torch.Generator(device).manual_seed(1), device=device)
    naive = model.naive_sample(6, generator=torch.Generator(device).manual_seed(1), device=device)
    assert torch.equal(fast, naive)
    assert fast.float().std() > 0  # not a degenerate draw


def test_cached_conditional_gated_sampler_draws_the_naive_samplers_images():
    torch.manual_seed(0)
    model = build_model("gated_pixel_cnn", image_shape=(1, 8, 8), levels=2, hidden_dims=12, recurrent_length=2,
                        conditional=True, num_classes=10)
    labels = torch.tensor([0, 3, 3, 7, 9, 1])
    fast = model.sample(generator=torch.Generator().manual_seed(4), labels=labels)
    naive = model.naive_sample(generator=torch.Generator().manual_seed(4), labels=labels)
    assert torch.equal(fast, naive) and fast.float().std() > 0


# ---------------------------------------------------------------- training switches


def quick_cfg(mnist10k, *extra):
    from pixelexp.config import load_config
    return load_config(None, ["model.name=pixel_cnn", "model.hidden_dims=8", "model.recurrent_length=2",
                              "model.out_hidden_dims=8", f"data.root={mnist10k}", "data.train_limit=400",
                              "data.val_size=100", "data.test_limit=200", "train.epochs=1", "train.batch_size=50",
                              "track.sample_count=0", *extra])


@pytest.mark.parametrize("name", ["pixel_cnn", "pixel_rnn"])
def test_evaluation_is_fp32_whatever_the_training_precision(name):
    """Every logged NLL is computed in fp32: the evaluation step under train.precision=bf16
    gives exactly the fp32 number (bf16 autocast runs on CPUs too, so this can fail here)."""
    from pixelexp.engine import fast
    from pixelexp.engine.metrics import evaluate
    torch.manual_seed(0)
    model = build_model(name, image_shape=(1, 6, 6), levels=2, hidden_dims=8, recurrent_length=2,
                        out_hidden_dims=8).eval()
    x = torch.randint(0, 2, (7, 1, 6, 6))
    cpu = torch.device("cpu")
    fp32 = evaluate(model, x, 4, cpu, step=fast.EvalStep(model, fast.PLAIN, cpu))
    bf16 = evaluate(model, x, 4, cpu, step=fast.EvalStep(model, fast.FastPaths(bf16=True), cpu))
    with fast.autocast(fast.FastPaths(bf16=True), cpu):  # what bf16 would have given: not the same
        in_bf16 = -model.log_prob(x).float().sum().item() / len(x)
    assert bf16 == fp32 and abs(in_bf16 - fp32) > 1e-4


def test_bf16_changes_the_bits_per_dim_of_a_short_training_by_under_001(mnist10k):
    from pixelexp.runs.train import run
    fp32 = run(quick_cfg(mnist10k, "train.precision=fp32"), None, progress=False).metrics
    bf16 = run(quick_cfg(mnist10k, "train.precision=bf16"), None, progress=False).metrics
    assert fp32["test_bpd"] != bf16["test_bpd"]  # it did run in bf16
    assert abs(fp32["test_bpd"] - bf16["test_bpd"]) < 0.01


@pytest.mark.parametrize("name", ["pixel_cnn", "row_lstm"])
def test_compiled_training_matches_eager(mnist10k, name, capsys):
    from pixelexp.runs.train import run
    args = [f"model.name={name}", "data.train_limit=100", "model.hidden_dims=4", "model.recurrent_length=1",
            "data.val_size=20", "data.test_limit=20", "model.out_hidden_dims=4", "train.batch_size=20"]
    eager = run(quick_cfg(mnist10k, *args, "train.compile=off"), None, progress=False).metrics
    capsys.readouterr()
    compiled = run(quick_cfg(mnist10k, *args, "train.compile=on"), None, progress=False).metrics
    said = capsys.readouterr()
    for k in ("train_bpd", "val_bpd", "test_bpd"):
        assert compiled[k] == pytest.approx(eager[k], rel=1e-5), k
    assert "compile" in said.out.splitlines()[0]  # the run says which fast paths it took
    assert "torch.compile failed" not in said.err  # compiled, not fallen back


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["pixel_cnn", "diagonal_bilstm"])
def test_cuda_graph_training_matches_eager(mnist10k, name, capsys):
    """Replaying forward + backward as a CUDA graph trains the same model as eager steps
    (fp32, no compile; 130 images in batches of 20: the last batch of 10 runs eagerly)."""
    from pixelexp.runs.train import run
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    args = [f"model.name={name}", "data.train_limit=130", "data.val_size=20", "data.test_limit=40",
            "train.batch_size=20", "train.epochs=2", "train.device=cuda", "train.precision=fp32",
            "train.compile=off", "train.channels_last=off", "train.deterministic=false"]
    eager = run(quick_cfg(mnist10k, *args, "train.cuda_graphs=off"), None, progress=False).metrics
    capsys.readouterr()
    graphs = run(quick_cfg(mnist10k, *args, "train.cuda_graphs=on"), None, progress=False).metrics
    said = capsys.readouterr()
    assert "cuda_graphs" in said.out.splitlines()[0]
    assert "warning: CUDA graph capture" not in said.err  # the training and evaluation steps
    for k in ("train_bpd", "val_bpd", "test_bpd"):
        assert graphs[k] == pytest.approx(eager[k], rel=1e-4), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name,shape,levels,extra", [
    ("pixel_cnn", (1, 8, 8), 2, {}), ("pixel_cnn", (3, 5, 5), 4, {}), ("gated_pixel_cnn", (1, 8, 8), 2, {}),
    ("gated_pixel_cnn", (1, 6, 6), 2, {"conditional": True, "num_classes": 3}),
    ("diagonal_bilstm", (1, 8, 8), 2, {}), ("row_lstm", (3, 5, 5), 4, {}), ("multiscale_pixel_rnn", (1, 8, 8), 2, {}),
])
def test_cuda_graph_sampler_draws_the_eager_samplers_images(name, shape, levels, extra):
    from pixelexp.engine import fast
    torch.manual_seed(0)
    model = build_model(name, image_shape=shape, levels=levels, hidden_dims=8, recurrent_length=2, **extra).cuda()
    labels = torch.tensor([0, 2, 1, 0, 2], device="cuda") if extra.get("conditional") else None

    def gen(seed):
        return torch.Generator(device="cuda").manual_seed(seed)
    eager = model.sample(5, generator=gen(1), labels=labels)
    graphs = fast.SamplerGraphs()
    first = fast.sample(model, 5, generator=gen(1), labels=labels, graphs=graphs)  # warm-up run + capture + replay
    assert graphs.entries[(5, labels is not None)].graph is not None  # captured, not fallen back
    again = fast.sample(model, 5, generator=gen(1), labels=labels, graphs=graphs)  # a replay
    other = fast.sample(model, 5, generator=gen(2), labels=labels, graphs=graphs)  # fresh numbers reach the graph
    assert torch.equal(first, eager) and torch.equal(again, eager)
    assert torch.equal(other, model.sample(5, generator=gen(2), labels=labels)) and not torch.equal(other, eager)


def test_a_graphed_step_is_captured_on_a_full_batch_not_on_a_first_partial_one(monkeypatch):
    """A resume that starts on an epoch's last batch, or a validation split smaller than a
    batch, must not make the smaller shape the captured one (every full batch would then
    run eagerly); without a CUDA device only the choice is checked here."""
    from pixelexp.engine import fast
    model = build_model("pixel_cnn", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1).eval()
    step = fast.EvalStep(model, fast.FastPaths(graphs=True), torch.device("cpu"), batch_size=4)
    tried = []
    monkeypatch.setattr(step, "_capture", lambda x, y, args, key: tried.append(len(x)))
    x = torch.randint(0, 2, (4, 1, 4, 4))
    partial, full = step(x[:3], None), step(x, None)
    assert tried == [4]
    assert torch.allclose(full[:3], partial) and torch.allclose(full, -model.log_prob(x).sum((1, 2, 3)))


def test_a_failing_compile_falls_back_to_eager_with_a_warning(mnist10k, monkeypatch, capsys):
    """A compiler backend that fails: dynamo raises BackendCompilerFailed, and the run
    goes on eager, saying why."""
    from pixelexp.runs.train import run
    compile_ = torch.compile

    def no_compiler(graph_module, example_inputs):
        raise RuntimeError("no compiler for this")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=no_compiler, **kw))
    eager = run(quick_cfg(mnist10k, "train.compile=off"), None, progress=False).metrics
    fallback = run(quick_cfg(mnist10k, "train.compile=on"), None, progress=False).metrics
    assert fallback["test_bpd"] == eager["test_bpd"]
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: no compiler for this)") == 1


# ---------------------------------------------------------------- compiled step functions and their fallback


def plus_one(x):
    return x + 1


def raises(error):
    def compiled(*args, **kwargs):
        raise error
    return compiled


def dynamo_errors():
    """Errors of the compiler stack, as torch.compile raises them."""
    from torch._dynamo import exc
    from torch._inductor.exc import InductorError
    return [exc.BackendCompilerFailed(plus_one, RuntimeError("no compiler for this"), None),
            InductorError(RuntimeError("no compiler for this"), None),
            exc.Unsupported("no compiler for this"), exc.InternalTorchDynamoError("no compiler for this")]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("shape"),
                                   KeyboardInterrupt(), "traced code's own error", "oom while compiling"])
def test_only_compiler_errors_make_a_compiled_function_run_eager(error, capsys):
    """Out of memory, a shape bug or an interrupt is raised as it is, without a warning,
    also where dynamo found it (TorchRuntimeError: the traced code's own error) or
    wraps it (an OOM while compiling); the compiled function is tried again next call."""
    from torch._dynamo import exc

    from pixelexp.engine.compiled import Fallback
    if error == "traced code's own error":
        error = exc.TorchRuntimeError("shape")
    elif error == "oom while compiling":
        error = exc.BackendCompilerFailed(plus_one, torch.OutOfMemoryError("CUDA out of memory"), None)
    fn = Fallback(raises(error), plus_one)
    for _ in range(2):
        with pytest.raises(type(error)) as got:
            fn(torch.zeros(2))
        assert got.value is error
    assert not fn.failed and capsys.readouterr().err == ""


@pytest.mark.parametrize("i", range(4))
def test_a_compiler_error_makes_a_compiled_function_run_eager_with_one_warning(i, capsys):
    from pixelexp.engine.compiled import Fallback
    calls = []
    error = dynamo_errors()[i]

    def compiled(x):
        calls.append(x)
        raise error
    fn = Fallback(compiled, plus_one)
    assert torch.equal(fn(torch.zeros(2)), torch.ones(2)) and torch.equal(fn(torch.ones(2)), 2 * torch.ones(2))
    assert fn.failed and len(calls) == 1  # not tried again
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed") == 1 and "no compiler for this" in err
    assert "RuntimeError: no compiler for this" in err or i > 1  # what the backend raised, not its wrapper


def test_a_real_failing_backend_falls_back(capsys):
    from pixelexp.engine.compiled import Fallback

    def no_compiler(graph_module, example_inputs):
        raise RuntimeError("no compiler for this")
    torch._dynamo.reset()
    fn = Fallback(torch.compile(plus_one, backend=no_compiler), plus_one)
    assert torch.equal(fn(torch.zeros(3)), torch.ones(3))
    assert capsys.readouterr().err.count("warning: torch.compile failed (RuntimeError: no compiler for this)") == 1


def test_the_compiler_errors_are_found_in_this_torch():
    from torch._dynamo import exc

    from pixelexp.engine.compiled import compiler_errors
    errors = compiler_errors()
    assert exc.TorchDynamoException in errors
    assert not issubclass(torch.OutOfMemoryError, errors) and RuntimeError not in errors


@pytest.mark.parametrize("name,layers", [("row_lstm", 3), ("diagonal_bilstm", 3), ("multiscale_pixel_rnn", 6),
                                         ("pixel_cnn", 0), ("gated_pixel_cnn", 0)])
def test_apply_hands_the_recurrent_layers_their_compiled_step_functions(name, layers, monkeypatch):
    """Each distinct step function is compiled once and shared by every layer that runs
    it; eager_only gives the layers the eager ones for a while; a convolutional model is
    compiled whole."""
    from pixelexp.engine import fast
    from pixelexp.engine.compiled import Fallback
    from pixelexp.nn.kernels import scan
    from pixelexp.nn.row_lstm import row_step
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    model = build_model(name, image_shape=(1, 8, 8), levels=2, hidden_dims=4, recurrent_length=3)
    recurrent = model.recurrent_layers()
    assert len(recurrent) == layers
    net = fast.apply(model, model, fast.FastPaths(compile=True))
    if not layers:
        assert isinstance(net, Fallback) and compiled == [model]
        return
    assert net is model
    eager = [row_step] if name == "row_lstm" else [scan.cell_forward, scan.cell_backward]
    assert compiled == eager  # once each
    kernels = {layer.kernels for layer in recurrent}
    assert len(kernels) == 1  # the same functions in every layer
    (k,) = kernels
    fns = [k.step] if name == "row_lstm" else [k.forward, k.backward]
    assert all(isinstance(f, Fallback) for f in fns) and [f.eager for f in fns] == eager
    with fast.eager_only(model):
        assert all(layer.kernels == type(k)(*eager) for layer in recurrent)
    assert all(layer.kernels == k for layer in recurrent)  # the same compiled functions again
    fast.apply(model, model, fast.FastPaths(compile=True))  # again: the eager functions compiled again
    assert compiled == eager * 2 and recurrent[0].kernels.map(lambda f: f.eager) == type(k)(*eager)


def test_a_layer_takes_only_its_own_kind_of_kernels():
    from pixelexp.nn.kernels.steps import RowStep, ScanCells
    model = build_model("diagonal_bilstm", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1)
    (layer,) = model.recurrent_layers()
    with pytest.raises(TypeError, match="takes ScanCells, not RowStep"):
        layer.use_kernels(RowStep(step=plus_one))
    cells = ScanCells(forward=plus_one, backward=plus_one)
    layer.use_kernels(cells)
    assert layer.kernels is cells


def test_the_sampler_runs_eager_without_graphs_or_a_cuda_device():
    from pixelexp.engine import fast
    model = build_model("row_lstm", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1)
    graphs = fast.SamplerGraphs()
    for kept in (None, graphs):
        got = fast.sample(model, 3, generator=torch.Generator().manual_seed(1), graphs=kept)
        assert torch.equal(got, model.sample(3, generator=torch.Generator().manual_seed(1)))
    assert graphs.entries == {} and graphs.model is None  # nothing captured on a CPU
    other = build_model("row_lstm", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1)
    assert graphs.get(model, (3, False)) is None
    with pytest.raises(ValueError, match="one SamplerGraphs per model"):
        graphs.get(other, (3, False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("error", [RuntimeError("operation not permitted when stream is capturing"),
                                   torch.OutOfMemoryError("CUDA out of memory")])
def test_a_failed_cuda_graph_capture_runs_eager_and_out_of_memory_is_raised(error, capsys):
    """An error raised while capturing a step makes it run eagerly with a warning; out
    of memory is raised as it is."""
    from pixelexp.engine import fast

    class Failing(fast.EvalStep):
        def eager(self, x, y, cache: bool = True):
            if torch.cuda.is_current_stream_capturing():
                raise error
            return super().eager(x, y, cache)
    model = build_model("pixel_cnn", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1).cuda().eval()
    step = Failing(model, fast.FastPaths(graphs=True), torch.device("cuda"))
    x = torch.randint(0, 2, (4, 1, 4, 4), device="cuda")
    if isinstance(error, torch.OutOfMemoryError):
        with pytest.raises(torch.OutOfMemoryError):
            step(x, None)
        return
    assert torch.allclose(step(x, None), -model.log_prob(x).sum((1, 2, 3)))
    assert step.graph is None and step.failed
    assert capsys.readouterr().err.count("warning: CUDA graph capture of the evaluation step failed") == 1
