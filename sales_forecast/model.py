"""The pretrained TTM: loaded for the run's context and horizon, adapted to drivers and categories, partly unfrozen."""

import fnmatch
import functools
import logging
from pathlib import Path
from typing import Sequence

import torch
from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerGatedAttention
from tsfm_public.toolkit.get_model import get_model
from tsfm_public.toolkit.time_series_preprocessor import DEFAULT_FREQUENCY_MAPPING
from tsfm_public.toolkit.util import count_parameters

from sales_forecast.panel import Panel
from sales_forecast.sales_csv import InputError
from sales_forecast.settings import ModelSettings

logger = logging.getLogger(__name__)

# Blocks that drivers and categories add to the pretrained TTM; always trained (they start at zero output).
DRIVER_BLOCKS = ("head.fcm_block", "decoder*channel_feature_mixer", "decoder_cat_embedding")


def check_hub(model_id: str) -> None:
    """Fail in about a second, not after ~40 s of download retries, when the Hugging Face Hub cannot be reached.

    A model already in the local hub cache still loads (after the retries, which the log announces).
    """
    import huggingface_hub
    import requests

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    try:
        huggingface_hub.model_info(model_id, timeout=5)
    except (requests.ConnectionError, requests.Timeout) as err:
        cached = Path(huggingface_hub.constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--")).is_dir()
        if not cached:
            raise InputError(
                f"PRETRAINED_MODEL={model_id}: the Hugging Face Hub cannot be reached ({type(err).__name__}) and the "
                "model is not in the local cache; work offline with a local folder: "
                "--PRETRAINED_MODEL=/path/to/ttm-90-30-ft-l1 (README: 'Solução de problemas')"
            ) from err
        logger.warning(
            "PRETRAINED_MODEL=%s: the Hub cannot be reached; loading the cached copy after the download retries "
            "(about 40 s). Set HF_HUB_OFFLINE=1 to skip them",
            model_id,
        )


def _driver_config(num_channels: int, num_drivers: int, category_sizes: Sequence[int]) -> dict:
    """TinyTimeMixerConfig overrides for known-future drivers (after the targets) and static categories: granite-tsfm's
    exogenous setup, forecast channel mixing over the drivers' future weeks (its mixer reads one week either side)."""
    extra = {}
    if num_drivers:
        extra = {
            "num_input_channels": num_channels + num_drivers,
            "prediction_channel_indices": list(range(num_channels)),
            "exogenous_channel_indices": list(range(num_channels, num_channels + num_drivers)),
            "enable_forecast_channel_mixing": True,
            "fcm_use_mixer": True,
            "fcm_context_length": 1,  # one week either side: 3 scored worse in the dunnhumby backtest
            "fcm_prepend_past": True,
        }
    if category_sizes:
        extra |= {"decoder_mode": "mix_channel", "categorical_vocab_size_list": list(category_sizes)}
    return extra


def _targets_only(num_targets: int, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Backbone forward pre-hook: encode the target channels only (see decode_targets_only)."""
    mask = kwargs.get("past_observed_mask")
    kwargs["past_observed_mask"] = None if mask is None else mask[..., :num_targets]
    return (args[0][..., :num_targets], *args[1:]), kwargs


def decode_targets_only(model: torch.nn.Module) -> torch.nn.Module:
    """Run backbone and decoder on the target channels only, when they are channel-independent (common_channel).

    With drivers, granite-tsfm encodes and decodes every input channel and then keeps the targets; the drivers
    reach the forecast through the forecast channel mixing only, which reads past and future values itself. The
    output is identical (a test checks it) and a run with 5 drivers costs about what one without does.
    """
    cfg = model.config
    hooked = bool(model.backbone._forward_pre_hooks)
    if cfg.prediction_channel_indices and cfg.decoder_mode == "common_channel" and not hooked:
        model.backbone.register_forward_pre_hook(
            functools.partial(_targets_only, len(cfg.prediction_channel_indices)), with_kwargs=True
        )
    return model


class ShortAxisSoftmax(torch.nn.Module):
    """torch.nn.Softmax(dim=-1), its twin, which TTM's gated attention applies; on CPU, when the last axis is the
    shorter of the last two, computed along the transposed axis: same values, 5x faster there. torch 2.13's CPU
    kernel vectorises along the softmax axis, and the patch mixer's axis holds 11 patches, so it took 42% of a
    forward on 2 cores (bare forward 1,280-1,340 -> 1,940-2,230 series/s, bare train step +7%; the bare forward
    with torch.nn.Softmax is in tests/benchmarks/bench_predict.py)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_cpu and inputs.dim() > 1 and inputs.shape[-1] < inputs.shape[-2]:
            return torch.softmax(inputs.transpose(-1, -2), dim=-2).transpose(-1, -2)
        return torch.softmax(inputs, dim=-1)


class PackedDropout(torch.nn.Module):
    """torch.nn.Dropout(p), its twin, with the mask drawn from 16 random bits per activation: four keep-or-drop
    choices from each 64-bit random number (the rate rounded to a multiple of 1/65536; kept activations scaled by
    the inverse of the rate kept, as torch does). torch 2.13's CPU dropout draws one random number per activation,
    and TTM r2.1 drops 40% of the activations in 97 layers: on 2 cores it took 75% of a training forward (a
    128 x 11 x 126 activation, forward and backward: 4.0 ms with torch.dropout, 1.4 ms with this mask). Elsewhere
    than on CPU, or outside training, torch's dropout runs."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (self.training and inputs.is_cpu and self.p > 0):
            return torch.nn.functional.dropout(inputs, self.p, self.training)
        dropped = round(self.p * 2**16)
        bits = torch.empty((inputs.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        keep = bits.view(torch.int16)[: inputs.numel()].view(inputs.shape) >= dropped - 2**15
        return inputs * keep * (2**16 / (2**16 - dropped))


def ready_to_run(model: torch.nn.Module) -> torch.nn.Module:
    """A loaded TTM as the pipeline runs it (build_model, load_artifacts): decode_targets_only, ShortAxisSoftmax in
    every gated attention and PackedDropout for every dropout layer. None has weights: saved models stay plain
    granite-tsfm ones."""
    for module in model.modules():
        if isinstance(module, TinyTimeMixerGatedAttention):
            module.attn_softmax = ShortAxisSoftmax()
        for name, child in module.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(module, name, PackedDropout(child.p).train(child.training))
    return decode_targets_only(model)


def _start_at_pretrained(model: torch.nn.Module) -> None:
    """Zero the output layers of the blocks added for drivers and categories, so that training starts from the
    pretrained forecast (random ones shift it: WAPE 0.4-1.1 at load in the probe)."""
    for name, module in model.named_modules():
        mixer_out = name.startswith("decoder") and name.endswith("channel_feature_mixer.mlp.fc2")
        if name == "head.fcm_block.mlp" or mixer_out:
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


class _NewBlocksNote(logging.Filter):
    """Drops transformers' list of newly initialised weights (~50 names) when drivers or categories add blocks on
    purpose; build_model logs them in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Some weights of")


def model_shape(settings: ModelSettings, panel: Panel) -> dict:
    """build_model's arguments besides the model: lengths and loss from the settings, channels from the panel."""
    return {
        "context_length": settings.context_length,
        "prediction_length": settings.prediction_length,
        "prefer_l1": settings.prefer_l1_loss,
        "num_channels": len(panel.targets),
        "num_drivers": len(panel.driver_specs),
        "category_sizes": [panel.keys[c].nunique() + 1 for c in panel.categorical],  # + the code of unseen values
    }


def build_model(
    model_path: str,
    *,
    context_length: int,
    prediction_length: int,
    prefer_l1: bool,
    num_channels: int,
    num_drivers: int = 0,
    category_sizes: Sequence[int] = (),
) -> torch.nn.Module:
    """Load the pretrained TTM variant for context/horizon (hub id or local folder) with get_model; with drivers or
    categories, its new blocks start at the pretrained forecast."""
    local = Path(model_path).expanduser()
    if not local.exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") != 1):
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: folder not found; give a folder with config.json and "
            "model.safetensors, or a hub id such as ibm-granite/granite-timeseries-ttm-r2"
        )
    if not local.exists():
        check_hub(model_path)
    new_blocks = _NewBlocksNote() if num_drivers or category_sizes else None
    try:
        if new_blocks:
            logging.getLogger("transformers.modeling_utils").addFilter(new_blocks)
        model = get_model(
            str(local) if local.exists() else model_path,
            context_length=context_length,
            prediction_length=prediction_length,
            freq="W",
            freq_prefix_tuning=True,
            prefer_l1_loss=prefer_l1,
            **{"num_input_channels": num_channels} | _driver_config(num_channels, num_drivers, category_sizes),
        )
    except OSError as err:
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: could not load it ({str(err).splitlines()[0]}). Offline? "
            "Download the model once, or point to a local folder: "
            "--PRETRAINED_MODEL=/path/to/ttm-90-30-ft-l1"
        ) from err
    finally:
        if new_blocks:
            logging.getLogger("transformers.modeling_utils").removeFilter(new_blocks)
    if model.config.context_length > context_length:
        raise InputError(
            f"PRETRAINED_MODEL={model_path} reads {model.config.context_length} weeks, more than "
            f"CONTEXT_LENGTH={context_length}; raise CONTEXT_LENGTH or pick a shorter model"
        )
    logger.info(
        "Model %s: context %d, horizon %d (of %d), loss %s; reads the last %d of CONTEXT_LENGTH=%d weeks",
        model_path,
        model.config.context_length,
        prediction_length,
        model.config.prediction_length,
        model.config.loss,
        model.config.context_length,
        context_length,
    )
    if new_blocks:
        added = sum(
            p.numel()
            for n, p in model.named_parameters()
            if any(fnmatch.fnmatchcase(n, f"*{b}*") for b in DRIVER_BLOCKS)
        )
        logger.info(
            "Blocks added for %d drivers and %d categories: %d parameters, starting at zero output",
            num_drivers,
            len(category_sizes),
            added,
        )
    _start_at_pretrained(model)
    return ready_to_run(model)


def window_shape(model: torch.nn.Module) -> dict:
    """What windows cut for the model must match: its context length and granite-tsfm's weekly frequency token
    (for models pretrained with one, r2.1; None otherwise)."""
    freq_token = DEFAULT_FREQUENCY_MAPPING["W"] if model.config.resolution_prefix_tuning else None
    return {"context": model.config.context_length, "freq_token": freq_token}


def unfreeze_only(model: torch.nn.Module, name_parts: Sequence[str]) -> float:
    """Freeze all parameters except those whose name contains one of name_parts (globs such as "decoder*fc1" too).

    Returns the trainable fraction.
    """
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad = any(fnmatch.fnmatchcase(name, f"*{part}*") for part in name_parts)
    trainable = count_parameters(model)
    if not trainable:
        raise InputError(
            f"TRAINABLE_LAYERS={list(name_parts)} matched no parameter; names look like {list(params)[:3]}"
        )
    total = sum(p.numel() for p in params.values())
    logger.info(
        "Trainable parameters: %d of %d (%.1f%%) in layers matching %s",
        trainable,
        total,
        100 * trainable / total,
        ", ".join(name_parts),
    )
    return trainable / total
