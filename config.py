"""Settings for ttm_model.py, plus the override helper.

Edit the constants below, or override any of them without editing code:

    python ttm_model.py --NUM_TRAIN_EPOCHS=5 --TARGET_COLUMNS=faturamento
    TTM_BATCH_SIZE=128 python ttm_model.py
    python ttm_model.py --ENV_FILE=runs/quick.env      # file with KEY=value lines

Precedence: defaults < ENV_FILE < TTM_* environment variables < command line.
Standard library imports only.
"""

import ast
import difflib
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

# --- 0. run ----------------------------------------------------------------
MODE: str = "train"  # "train" (fit, evaluate, forecast) or "predict" (reuse FINAL_MODEL_DIR)
SEED: int = 42  # seeds data synthesis, weights init, batch order
LOG_LEVEL: str = "INFO"  # DEBUG, INFO, WARNING
DEBUG: bool = False  # True shows the Python traceback of input errors
FRESH_START: bool = False  # True ignores checkpoints of an interrupted run instead of resuming
USE_CPU: bool = False  # True trains on CPU even when a GPU is present

# --- 1. load ---------------------------------------------------------------
DATA_PATH: str = "dados/db_tratado-w.csv"  # CSV: date, produto_cat, uf_cat, vendas, faturamento; absent -> synthetic
DATE_COLUMN: str = "date"  # week (or day) of the row
ID_COLUMNS: tuple = ("produto_cat", "uf_cat")  # one series per product x UF
TARGET_COLUMNS: tuple = ("vendas", "faturamento")  # columns forecast; e.g. --TARGET_COLUMNS=faturamento

# --- 2. weekly resampling + scaling ------------------------------------------
WEEK_ANCHOR: str = "auto"  # "auto" keeps the weekday of weekly input (W-SUN for daily), or "W-WED"...

# --- 3. split ----------------------------------------------------------------
MIN_CONTEXT_WEEKS: int = 26  # observed weeks a window needs before its forecast start
TRAIN_STRIDE: int = 4  # weeks between training windows of a series (1 = every window, 4x slower)
MAX_TRAIN_WINDOWS: int = 10000  # cap per epoch: the stride grows on big panels (0 = no cap)

# --- 4. model ----------------------------------------------------------------
# hub id or local folder (e.g. ../shared/ttm-weights/ttm-90-30-ft-l1)
PRETRAINED_MODEL: str = "ibm-granite/granite-timeseries-ttm-r2"
CONTEXT_LENGTH: int = 104  # weeks of history available; the model reads its own (90) last weeks
PREDICTION_LENGTH: int = 26  # weeks forecast
PREFER_L1_LOSS: bool = True  # hub only: pick the variant trained with L1 loss (better on sales)
TRAINABLE_LAYERS: tuple = ("decoder*fc1", "decoder*fc2")  # parameter-name parts/globs trained; all else frozen

# --- 5. training -------------------------------------------------------------
LEARNING_RATE: float = 3e-3  # OneCycleLR max_lr (same value given to AdamW)
WEIGHT_DECAY: float = 0.0  # AdamW weight decay
NUM_TRAIN_EPOCHS: int = 40  # cap, and the length of the OneCycleLR cycle; early stopping may end sooner
BATCH_SIZE: int = 64  # windows per step (train and eval)
EARLY_STOPPING_PATIENCE: int = 15  # epochs without eval_loss improvement before stopping
NUM_WORKERS: int = 0  # DataLoader workers (0 is fastest on CPU; try 4-8 on GPU)
MIN_FREE_DISK_MB: int = 200  # refuse to start training with less free space than this
INTERVAL_LEVEL: float = 0.8  # coverage of the prediction interval in previsoes.csv (0-1)
PLOT_TOP_SERIES: int = 6  # plots of the largest series by revenue under RESULTS_DIR/plots/
RESULTS_DIR: str = "results_ttm_model"  # TensorBoard logs/, checkpoints, metrics, forecasts
FINAL_MODEL_DIR: str = "final_ttm_model"  # model weights + config.json + preprocessor.pkl + conformal.pkl + settings

ENV_PREFIX = "TTM_"


def defaults() -> dict:
    """Return the module's UPPER_CASE settings as a dict."""
    return {k: v for k, v in globals().items() if k.isupper() and k != "ENV_PREFIX"}


def _cast(key: str, raw: str, default: object, source: str) -> object:
    """Turn the text `raw` into a value of the same type as `default`."""
    if isinstance(default, tuple):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, (tuple, list)):
            value = tuple(part.strip() for part in raw.split(",") if part.strip())
        return tuple(value)
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{source}: {key} must be True or False, got {raw!r}")
    if isinstance(default, str):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
        return value if isinstance(value, str) else raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise ValueError(f"{source}: {key} must be {type(default).__name__} (default {default!r}), got {raw!r}")
    return value


def _check_key(key: str, known: Mapping, source: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(sorted(known))}"
        raise ValueError(f"{source}: unknown setting {key!r}{hint}")


def _parse_env_file(path: str) -> dict[str, str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ENV_FILE={path}: file not found; give a file with KEY=value lines")
    pairs = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: expected KEY=value, got {line!r}")
        key, value = line.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def resolve(argv: Sequence[str], environ: Mapping[str, str]) -> SimpleNamespace:
    """Return the settings after applying ENV_FILE, TTM_* variables and --KEY=value arguments, in that order."""
    known = defaults()
    cli = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"command line: expected --KEY=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        cli[key] = value
    layers = []
    env_file = cli.pop("ENV_FILE", environ.get(f"{ENV_PREFIX}ENV_FILE"))
    if env_file:
        layers.append((f"ENV_FILE {env_file}", _parse_env_file(env_file)))
    env = {k[len(ENV_PREFIX) :]: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k != "TTM_ENV_FILE"}
    layers += [("environment (TTM_*)", env), ("command line", cli)]
    settings = dict(known)
    for source, pairs in layers:
        for key, raw in pairs.items():
            _check_key(key, known, source)
            settings[key] = _cast(key, raw, known[key], source)
    if settings["MODE"] not in ("train", "predict"):
        raise ValueError(f"MODE must be 'train' or 'predict', got {settings['MODE']!r}")
    return SimpleNamespace(**settings)
