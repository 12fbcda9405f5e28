"""The model's training paths: the CPU LSTM kernel, the fused output loss and the dropout variants."""

from __future__ import annotations

import pytest
import torch

from rnnlm_cli.checkpoint import load_checkpoint
from rnnlm_cli.errors import ConfigError
from rnnlm_cli.model import ModelConfig, RNNLanguageModel
from rnnlm_cli.model.lstm_cpu import lstm_layer
from rnnlm_cli.model.output_loss import linear_cross_entropy, linear_nll


def test_lstm_kernel_matches_nn_lstm_forward_and_backward():
    torch.manual_seed(0)
    steps, batch, inputs, hidden = 7, 3, 5, 6
    reference = torch.nn.LSTM(inputs, hidden, 1)
    x = torch.randn(steps, batch, inputs, requires_grad=True)
    h0, c0 = torch.randn(batch, hidden, requires_grad=True), torch.randn(batch, hidden, requires_grad=True)

    out, (h, c) = reference(x, (h0[None], c0[None]))
    ((out**2).sum() + (h * 3).sum() + c.sum()).backward()
    expected = [t.grad.clone() for t in (x, h0, c0, *reference.parameters())]
    for tensor in (x, h0, c0, *reference.parameters()):
        tensor.grad = None

    out2, h2, c2 = lstm_layer(x, h0, c0, *reference.parameters())
    ((out2**2).sum() + (h2 * 3).sum() + c2.sum()).backward()
    assert torch.allclose(out2, out, atol=1e-6) and torch.allclose(h2, h[0], atol=1e-6)
    got = [t.grad for t in (x, h0, c0, *reference.parameters())]
    for name, a, b in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], got, expected):
        assert torch.allclose(a, b, atol=1e-5), name


def test_lstm_kernel_in_bf16_stays_close():
    torch.manual_seed(1)
    reference = torch.nn.LSTM(16, 16, 1)
    x = torch.randn(10, 4, 16)
    zeros = torch.zeros(4, 16)
    exact, _, _ = lstm_layer(x, zeros, zeros, *reference.parameters())
    low, _, _ = lstm_layer(x, zeros, zeros, *reference.parameters(), dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    assert (low - exact).abs().max() < 2e-2


def _loss_and_grads(loss_fn, features, linear, targets, scale):
    for tensor in (features, *linear.parameters()):
        tensor.grad = None
    loss = loss_fn(features, linear, targets)
    (loss * scale).backward()
    return [loss.detach()] + [t.grad.clone() for t in (features, *linear.parameters())]


@pytest.mark.parametrize("rows", [1, 31, 70])  # fewer, as many and more rows than one block
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("column_major", [False, True])  # the model keeps an untied output weight column-major
def test_fused_output_loss_matches_linear_and_cross_entropy(rows, bias, column_major):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(12, 50, bias=bias)
    if column_major:
        linear.weight = torch.nn.Parameter(linear.weight.detach().t().contiguous().t())
    features = (torch.randn(rows, 12) * 3).requires_grad_()
    targets = torch.randint(0, 50, (rows,))
    expected = _loss_and_grads(lambda f, lin, t: torch.nn.functional.cross_entropy(lin(f), t),
                               features, linear, targets, 2.5)
    got = _loss_and_grads(lambda f, lin, t: linear_cross_entropy(f, lin.weight, lin.bias, t, torch.float32),
                          features, linear, targets, 2.5)
    for name, a, b in zip(["loss", "features", "weight", "bias"], got, expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    low = _loss_and_grads(lambda f, lin, t: linear_cross_entropy(f, lin.weight, lin.bias, t, torch.bfloat16),
                          features, linear, targets, 2.5)
    assert torch.allclose(low[0], expected[0], rtol=2e-2)
    for a, b in zip(low[1:], expected[1:]):
        assert (a - b).abs().max() <= 0.03 * b.abs().max()
    with torch.no_grad():  # scoring without gradients gives the same loss
        assert torch.allclose(linear_cross_entropy(features, linear.weight, linear.bias, targets, torch.float32),
                              expected[0], rtol=1e-5)


def test_fused_loss_of_a_target_far_below_the_others_is_exact():
    # probabilities of e^-200 underflow in fp32: the loss must still be the log-sum-exp minus the target logit
    torch.manual_seed(5)
    weight = torch.randn(50, 4)
    features = torch.randn(40, 4)
    targets = torch.randint(0, 50, (40,))
    weight[targets[3]] = 0.0
    features[3] = weight[(targets[3] + 1) % 50] * 200 / weight[(targets[3] + 1) % 50].square().sum()
    logits = features @ weight.t()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert expected[3] > 150
    features.requires_grad_()
    loss = linear_cross_entropy(features, weight, None, targets, torch.float32)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    assert torch.allclose(linear_nll(features.detach(), weight, None, targets), expected, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 33, 70])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_scoring_nll_matches_cross_entropy_per_token(rows, bias):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(12, 50, bias=bias)
    features, targets = torch.randn(rows, 12) * 3, torch.randint(0, 50, (rows,))
    expected = torch.nn.functional.cross_entropy(linear(features), targets, reduction="none").detach()
    got = linear_nll(features, linear.weight, linear.bias, targets)
    assert got.shape == (rows,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    # bf16 products: each logit is rounded to bf16 (relative error 2^-8), the log-softmax stays fp32
    low = linear_nll(features, linear.weight, linear.bias, targets, torch.bfloat16)
    logit_scale = linear(features).detach().abs().max()
    assert (low - expected).abs().max() <= 2 * 2**-8 * logit_scale
    assert not torch.equal(low, got)


def test_token_nll_on_cpu_equals_cross_entropy_of_the_logits():
    torch.manual_seed(3)
    model = RNNLanguageModel(ModelConfig(vocab_size=40, emb_size=8, hidden_size=8, layers=1))
    features, targets = torch.randn(2500, 8), torch.randint(0, 40, (2500,))
    expected = torch.nn.functional.cross_entropy(model.logits(features), targets, reduction="none").detach()
    assert torch.allclose(model.token_nll(features, targets, chunk_size=1000), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,kernel", [("lstm", True), ("lstm", False), ("gru", False), ("rnn_tanh", False)])
@pytest.mark.parametrize("variational", [False, True])
def test_training_path_without_dropout_equals_inference(monkeypatch, cell, kernel, variational):
    # the kernel normally runs under bf16 autocast only; force it here to compare in fp32
    monkeypatch.setattr(RNNLanguageModel, "_cpu_lstm_kernel", lambda self, x: kernel)
    torch.manual_seed(2)
    model = RNNLanguageModel(ModelConfig(50, cell=cell, emb_size=8, hidden_size=8, layers=3, dropout=0.0,
                                         variational=variational))
    ids = torch.randint(0, 50, (4, 9))
    hidden = model.init_hidden(4)
    model.eval()
    expected, expected_hidden = model(ids, hidden)
    model.train()
    got, got_hidden = model(ids, hidden)
    assert torch.allclose(got, expected, atol=1e-5)
    for a, b in zip(got_hidden if isinstance(got_hidden, tuple) else [got_hidden],
                    expected_hidden if isinstance(expected_hidden, tuple) else [expected_hidden]):
        assert torch.allclose(a, b, atol=1e-5)


def test_variational_dropout_shares_one_mask_across_time():
    torch.manual_seed(3)
    model = RNNLanguageModel(ModelConfig(10, emb_size=6, hidden_size=6, layers=1, dropout=0.5, variational=True))
    model.train()
    x = torch.ones(25, 4, 6)  # (T, B, F)
    dropped = model._dropout(x, 0.5)
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same mask at every step
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    plain = RNNLanguageModel(ModelConfig(10, emb_size=6, hidden_size=6, layers=1, dropout=0.5))
    plain.train()
    assert not torch.equal(*plain._dropout(x, 0.5)[:2])  # standard dropout: a new mask per step


@pytest.mark.parametrize("p", [0.3, 0.65])
def test_dropout_keeps_the_share_1_minus_p_scaled_by_its_inverse(p):
    torch.manual_seed(6)
    model = RNNLanguageModel(ModelConfig(10, emb_size=6, hidden_size=6, layers=1, dropout=p))
    model.train()
    dropped = model._dropout(torch.ones(50, 40, 100), p)
    assert dropped.dtype == torch.float32
    assert dropped.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    assert (dropped > 0).float().mean().item() == pytest.approx(1 - p, abs=0.01)  # 200,000 draws: sd 0.001
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.02)  # the expected value is kept


def test_word_dropout_removes_whole_words():
    torch.manual_seed(4)
    model = RNNLanguageModel(ModelConfig(20, emb_size=5, hidden_size=5, layers=1, dropout=0.0, word_dropout=0.5))
    model.train()
    ids = torch.arange(20).repeat(3, 1).t()  # (T=20, B=3): every word in every column
    embedded = model._embed(ids)
    dropped_rows = (embedded == 0).all(dim=-1)  # (T, B)
    assert dropped_rows.any() and not dropped_rows.all()
    assert torch.equal(dropped_rows[:, 0], dropped_rows[:, 1])  # a dropped word is dropped everywhere
    kept = ~dropped_rows[:, 0]
    assert torch.allclose(embedded[kept, 0], 2 * model.embedding.weight[kept])
    model.eval()
    assert torch.equal(model._embed(ids), model.embedding(ids))


def test_untied_output_weight_is_column_major_and_tied_one_is_the_embedding():
    untied = RNNLanguageModel(ModelConfig(vocab_size=30, emb_size=8, hidden_size=8))
    assert untied.decoder.weight.shape == (30, 8) and untied.decoder.weight.stride() == (1, 30)
    r = untied.config.init_range
    assert untied.decoder.weight.abs().max() <= r and untied.decoder.weight.std() > r / 3  # drawn, not zeros
    tied = RNNLanguageModel(ModelConfig(vocab_size=30, emb_size=8, hidden_size=8, tie_weights=True))
    assert tied.decoder.weight is tied.embedding.weight and tied.embedding.weight.is_contiguous()


def test_tied_weights_with_different_sizes_are_refused():
    from rnnlm_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="--tie-weights needs --emb-size equal to --hidden-size"):
        ModelConfig(10, emb_size=4, hidden_size=8, tie_weights=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_init_recurrent_draws_every_recurrent_parameter_from_the_init_range(cell):
    """PyTorch draws recurrent weights from +-1/sqrt(hidden) = +-0.25 here; with init_recurrent every weight and
    bias of both stacks of a biLM comes from +-init_range = +-0.8 instead, spread over the whole range."""
    torch.manual_seed(0)
    config = {"cell": cell, "emb_size": 8, "hidden_size": 16, "init_range": 0.8, "direction": "both"}
    drawn = RNNLanguageModel(ModelConfig(50, init_recurrent=True, **config))
    default = RNNLanguageModel(ModelConfig(50, **config))
    for stack in (drawn.rnn, drawn.rnn_backward):
        for name, parameter in stack.named_parameters():
            assert 0.25 < parameter.abs().max() <= 0.8, name  # beyond PyTorch's own range
        values = torch.cat([parameter.detach().flatten() for parameter in stack.parameters()])
        assert abs(values.mean().item()) < 0.02 and values.std().item() == pytest.approx(0.8 / 3 ** 0.5, rel=0.05)
    assert all(parameter.abs().max() <= 0.25 for parameter in default.rnn.parameters())
    assert drawn.embedding.weight.abs().max() > 0.7 and default.embedding.weight.abs().max() > 0.7


def test_cpu_lstm_kernel_is_chosen_for_wide_lstms_in_bf16():
    x = torch.zeros(3, 2, 4)
    wide = RNNLanguageModel(ModelConfig(10, emb_size=512, hidden_size=512, layers=1))
    narrow = RNNLanguageModel(ModelConfig(10, emb_size=64, hidden_size=64, layers=1))
    gru = RNNLanguageModel(ModelConfig(10, cell="gru", emb_size=512, hidden_size=512, layers=1))
    assert not wide._cpu_lstm_kernel(x)  # fp32: oneDNN's fused LSTM is faster
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wide._cpu_lstm_kernel(x) and not narrow._cpu_lstm_kernel(x) and not gru._cpu_lstm_kernel(x)


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_hidden_gradient_probe_shows_vanishing_and_exploding_gradients(gain):
    """With h' = relu(W_ih x + b + gain * h) kept in its linear range, d loss / d h from k steps back is gain^k
    times that of the last step: the probe must show exactly that ratio from one step to the next."""
    model = RNNLanguageModel(ModelConfig(20, cell="rnn_relu", emb_size=4, hidden_size=6, layers=1))
    with torch.no_grad():
        model.embedding.weight.uniform_(0.1, 0.2)
        model.rnn.weight_ih_l0.uniform_(0.1, 0.2)
        model.rnn.bias_ih_l0.fill_(1.0)  # every pre-activation stays positive: relu is the identity here
        model.rnn.bias_hh_l0.zero_()
        model.rnn.weight_hh_l0.copy_(gain * torch.eye(6))
    model.train()
    norms = model.hidden_gradient_norms(torch.randint(0, 20, (3, 12)), torch.randint(0, 20, (3,)))
    assert norms.shape == (11,)
    assert torch.allclose(norms[1:] / norms[:-1], torch.full((10,), gain), rtol=1e-4)
    assert model.training and all(p.grad is None for p in model.parameters())  # nothing left behind


def test_forget_bias_starts_every_forget_gate_there_and_is_left_out_when_unset(cli, word_dataset, tmp_path):
    config = ModelConfig(vocab_size=20, cell="lstm", emb_size=6, hidden_size=5, layers=2, direction="both",
                         forget_bias=1.5)
    model = RNNLanguageModel(config)
    for backward in (False, True):
        for name, parameter in model.stack(backward).named_parameters():
            if name.startswith("bias_"):
                forget = parameter[5:10].tolist()
                assert forget == ([1.5] * 5 if "ih" in name else [0.0] * 5)
                assert parameter[:5].abs().max() > 0  # the other gates keep PyTorch's random biases
    assert ModelConfig.from_dict(config.to_dict()).forget_bias == 1.5
    assert "forget_bias" not in ModelConfig(vocab_size=20).to_dict()  # checkpoints without it are as before
    with pytest.raises(ConfigError, match="--forget-bias sets an LSTM"):
        ModelConfig(vocab_size=20, cell="gru", forget_bias=1.0)
    checkpoint = tmp_path / "f.pt"
    cli("train", word_dataset, "--out", checkpoint, "--layers", "1", "--emb-size", "8", "--hidden-size", "8",
        "--epochs", "1", "--forget-bias", "1", "-q")
    assert load_checkpoint(checkpoint).model_config.forget_bias == 1.0
    cli("train", word_dataset, "--resume", checkpoint, "--epochs", "2", "-q")  # a setting kept on resume
    assert load_checkpoint(checkpoint).model_config.forget_bias == 1.0
    assert cli("train", word_dataset, "--out", tmp_path / "g.pt", "--cell", "gru", "--forget-bias", "1",
               expect=2).stdout == ""
