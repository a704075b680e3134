"""The model: pretrained TTM loaded for the run's shape, fc1/fc2-based unfreezing, ShortAxisSoftmax's and
PackedDropout's parity with their torch twins."""

import copy

import pytest
import torch
from conftest import HORIZON
from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerGatedAttention

from sales_forecast.model import PackedDropout, ShortAxisSoftmax, build_model, unfreeze_only, window_shape
from sales_forecast.sales_csv import InputError


def test_only_named_layers_trainable(model_dir):
    model = build_model(model_dir, context_length=104, prediction_length=26, prefer_l1=True, num_channels=2)
    fraction = unfreeze_only(model, ("fc1", "fc2"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("fc1" in n or "fc2" in n for n in names)
    assert 0 < fraction < 1
    with pytest.raises(InputError, match=r"TRAINABLE_LAYERS=\['nope'\] matched no parameter"):
        unfreeze_only(model, ("nope",))
    unfreeze_only(model, ("decoder*fc1", "decoder*fc2"))  # a glob: fc1/fc2 of the decoder only
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("decoder.") and (".fc1." in n or ".fc2." in n) for n in names)


def test_short_axis_softmax_gives_the_library_softmaxs_forecast_and_gradients(model_dir):
    ours = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    unfreeze_only(ours, ("fc1", "fc2"))
    library = copy.deepcopy(ours)
    for module in library.modules():
        if isinstance(module, TinyTimeMixerGatedAttention):
            module.attn_softmax = torch.nn.Softmax(dim=-1)
    shapes = []
    for module in ours.modules():
        if isinstance(module, ShortAxisSoftmax):
            module.register_forward_hook(lambda _, inputs, __: shapes.append(inputs[0].shape))
    torch.manual_seed(0)
    past, future = torch.randn(8, ours.config.context_length, 2), torch.randn(8, HORIZON, 2)
    runs = []
    for model in (ours, library):
        out = model(past_values=past, future_values=future, freq_token=torch.full((8,), 9))
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        runs.append((out.prediction_outputs.detach(), grads))
    assert any(s[-1] < s[-2] for s in shapes) and any(s[-1] > s[-2] for s in shapes)  # both ways were taken
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for ours_grad, library_grad in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(ours_grad, library_grad, rtol=1e-4, atol=1e-6)


def test_model_errors_name_the_setting(model_dir):
    with pytest.raises(InputError, match=r"PRETRAINED_MODEL=./no/such/folder: folder not found"):
        build_model("./no/such/folder", context_length=104, prediction_length=26, prefer_l1=True, num_channels=2)
    with pytest.raises(InputError, match=r"reads 90 weeks, more than CONTEXT_LENGTH=52"):
        build_model(model_dir, context_length=52, prediction_length=26, prefer_l1=True, num_channels=2)


def test_unreachable_hub_fails_at_once(monkeypatch, tmp_path):
    import huggingface_hub
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(InputError, match=r"cannot be reached \(ConnectionError\).*--PRETRAINED_MODEL=/path/to/"):
        build_model(
            "ibm-granite/granite-timeseries-ttm-r2",
            context_length=104,
            prediction_length=26,
            prefer_l1=True,
            num_channels=2,
        )


def test_window_shape_is_the_models_context_and_weekly_token(model_dir):
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    assert window_shape(model) == {"context": 90, "freq_token": 9}  # r2.1 models read weekly "W" = 9


def test_packed_dropout_drops_at_torchs_rate_and_scale_and_passes_gradients_through_kept_activations():
    torch.manual_seed(0)
    inputs = (torch.rand(64, 11, 126) + 1).requires_grad_()
    for rate in (0.1, 0.4, 0.7):
        ours, twin = PackedDropout(rate), torch.nn.Dropout(rate)
        out = ours(inputs)
        kept = out != 0
        assert abs(kept.float().mean().item() - (1 - rate)) < 0.01  # 88,704 activations: 5 standard deviations
        torch.testing.assert_close(out[kept], (inputs / (1 - rate))[kept], rtol=1e-4, atol=0)
        assert abs(out.mean().item() / inputs.mean().item() - 1) < 0.01  # unbiased, as torch's
        assert abs(twin(inputs).mean().item() / inputs.mean().item() - 1) < 0.01
        out.sum().backward()
        torch.testing.assert_close(inputs.grad, kept / (1 - rate), rtol=1e-4, atol=0)
        inputs.grad = None
    torch.manual_seed(1)
    first = PackedDropout(0.4)(inputs)
    torch.manual_seed(1)
    assert torch.equal(first, PackedDropout(0.4)(inputs))  # the run's seed fixes the masks
    assert torch.equal(PackedDropout(0.4).eval()(inputs), inputs) and torch.equal(PackedDropout(0.0)(inputs), inputs)


def test_every_dropout_layer_of_the_run_model_is_packed_at_its_rate(model_dir):
    loaded = build_model(model_dir, context_length=104, prediction_length=26, prefer_l1=True, num_channels=2)
    rates = [m.p for m in loaded.modules() if isinstance(m, (torch.nn.Dropout, PackedDropout))]
    assert rates and not any(type(m) is torch.nn.Dropout for m in loaded.modules())
    assert set(rates) == {loaded.config.dropout, loaded.config.head_dropout} - {0}
