"""Settings for ttm_model.py, plus the override helper.

Edit the constants below, or override any of them without editing code:

    python ttm_model.py --NUM_TRAIN_EPOCHS=5 --TARGET_COLUMNS=faturamento
    TTM_BATCH_SIZE=128 python ttm_model.py
    python ttm_model.py --ENV_FILE=minha_config.env      # a file with KEY=value lines
    python ttm_model.py --help                           # every setting with its default and meaning

Precedence: defaults < ENV_FILE < TTM_* environment variables < command line. Every value is checked (type, then
range or choices) before any work starts. Standard library imports only.
"""

import ast
import difflib
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

# --- 0. run ------------------------------------------------------------------
MODE: str = "train"  # "train" (fit, evaluate, forecast) or "predict" (reuse FINAL_MODEL_DIR)
SEED: int = 42  # seeds data synthesis, weights init, batch order (>= 0)
LOG_LEVEL: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
DEBUG: bool = False  # True shows the Python traceback of input errors
FRESH_START: bool = False  # True ignores checkpoints of an interrupted run instead of resuming
USE_CPU: bool = False  # True trains and predicts on CPU even when a GPU is present

# --- 1. load -----------------------------------------------------------------
DATA_PATH: str = "dados/db_tratado-w.csv"  # CSV: date, produto_cat, uf_cat, vendas, faturamento; absent -> synthetic
DATE_COLUMN: str = "date"  # week (or day) of the row
ID_COLUMNS: tuple = ("produto_cat", "uf_cat")  # 1 to 3 columns naming a series (product x UF)
TARGET_COLUMNS: tuple = ("vendas", "faturamento")  # columns forecast; e.g. --TARGET_COLUMNS=faturamento
CONTROL_COLUMNS: tuple = ()  # numeric columns known ahead (prices, promotion flags/shares), e.g. preco,promocao
FUTURE_PATH: str = "dados/futuro.csv"  # CONTROL_COLUMNS for the PREDICTION_LENGTH weeks after the data, every series
HOLIDAY_COUNTRY: str = "BR"  # weekly holiday flags (per UF where an id column holds UF codes); "" = none; US, PT, ...
CATEGORICAL_COLUMNS: tuple = ()  # id columns fed to TTM as static categories (README: why none by default)

# --- 2. weekly resampling + scaling ------------------------------------------
WEEK_ANCHOR: str = "auto"  # "auto" keeps the weekday of weekly input (W-SUN for daily), or W-MON .. W-SUN
GAP_WEEKS: int = 13  # this many weeks in a row without rows, rows a year before: missing data, interpolated (0: off)
DRIVER_EFFECT: bool = True  # with drivers: their fitted effect is divided out of the targets before TTM reads them

# --- 3. split and backtest ---------------------------------------------------
BACKTEST_ORIGINS: int = 3  # forecast origins of the rolling backtest, the last one ending at the data's end (>= 1)
BACKTEST_STEP: int = 0  # weeks between backtest origins (0 = PREDICTION_LENGTH)
MIN_CONTEXT_WEEKS: int = 26  # observed weeks a window needs before its forecast start (>= 1)
TRAIN_STRIDE: int = 1  # weeks between training windows of a series (1 = every window)
MAX_TRAIN_WINDOWS: int = 1500  # windows per epoch, drawn at random from all training windows (0 = all)
MAX_VALID_WINDOWS: int = 6000  # validation windows scored each epoch: a fixed random sample of series (0 = all)

# --- 4. model ----------------------------------------------------------------
PRETRAINED_MODEL: str = "ibm-granite/granite-timeseries-ttm-r2"  # hub id, or local folder with config.json
CONTEXT_LENGTH: int = 104  # weeks of history available; the model reads its own (90) last weeks
PREDICTION_LENGTH: int = 26  # weeks forecast (>= 1)
PREFER_L1_LOSS: bool = True  # hub only: pick the variant trained with L1 loss (better on sales)
TRAINABLE_LAYERS: tuple = ("decoder*fc1", "decoder*fc2", "head")  # parameter-name parts/globs trained; rest frozen

# --- 5. training -------------------------------------------------------------
LEARNING_RATE: float = 3e-3  # OneCycleLR max_lr, the same value given to AdamW (> 0)
WEIGHT_DECAY: float = 0.0  # AdamW weight decay (>= 0)
NUM_TRAIN_EPOCHS: int = 30  # cap, and the length of the OneCycleLR cycle; early stopping may end sooner
BATCH_SIZE: int = 64  # windows per step (train and eval)
EARLY_STOPPING_PATIENCE: int = 15  # epochs without validation WAPE improvement before stopping (>= 0)
NUM_WORKERS: int = 0  # DataLoader workers when windows are cut on the CPU (0 is fastest on CPU)
GATHER_ON_GPU: bool = True  # on a GPU, keep the scaled panel there and cut windows on it; False: NUM_WORKERS cut them
GBM_TREES: int = 500  # trees of each of the gbm's 3 LightGBM fits (mlforecast, lags 1..52 + drivers); 0 = TTM only
GBM_MAX_ROWS: int = 1_000_000  # series-weeks the gbm learns from; more: a random sample of the series (0 = all)
MIN_FREE_DISK_MB: int = 200  # refuse to start training with less free space than this (MB)

# --- 6. evaluation, forecast and outputs -------------------------------------
FORECAST_METHOD: str = "auto"  # "auto": the backtest winner per target; or e.g. gbm+fine_tuned, 0.7*gbm+0.3*zero_shot
PREDICT_PART_ROWS: int = 5_000_000  # predict mode: a larger CSV is split by series into parts of this many rows
INTERVAL_LEVEL: float = 0.8  # coverage of the prediction interval in previsoes.csv (between 0 and 1)
PLOT_TOP_SERIES: int = 6  # plots of the largest series by revenue under RESULTS_DIR/plots/ (0 = none)
RESULTS_DIR: str = "results_ttm_model"  # TensorBoard logs/, checkpoints, metrics, forecasts
FINAL_MODEL_DIR: str = "final_ttm_model"  # model weights + config.json + preprocessor.pkl + conformal.pkl + settings

ENV_PREFIX = "TTM_"
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
# The forecast methods the backtest chooses from per target, in order of preference on a tie (zero-shot first:
# identical forecasts need no fine-tuning). A blend ("a+b") is the mean of its parts; "a+b@fitted" weighs them by
# weights chosen on earlier backtest origins (in steps of 0.05) and is saved with its weights, e.g. "0.6*gbm+0.4*
# fine_tuned". A series too short for the gbm takes the other parts of a blend (zero_shot for gbm alone).
# FORECAST_METHOD may name any of them, or explicit weights.
METHODS = (
    "zero_shot",
    "fine_tuned",
    "gbm",
    "seasonal_naive",
    "naive",
    "zero_shot+seasonal_naive",
    "fine_tuned+zero_shot",
    "fine_tuned+seasonal_naive",
    "fine_tuned+zero_shot+seasonal_naive",
    "gbm+zero_shot",
    "gbm+fine_tuned",
    "gbm+fine_tuned+zero_shot",
    "gbm+zero_shot@fitted",
    "gbm+fine_tuned@fitted",
    "gbm+fine_tuned+zero_shot@fitted",
)
FORECASTS = ("zero_shot", "fine_tuned", "gbm", "seasonal_naive", "naive")  # what methods are made of
WEIGHTED_PART = re.compile(r"(?:(\d*\.?\d+)\*)?(\w+)")  # "0.6*gbm" or "gbm" in a method's name


def known_method(method: str) -> bool:
    """True for a name of METHODS or a blend of FORECASTS with a weight for each, such as 0.7*gbm+0.3*fine_tuned."""
    if method in METHODS:
        return True
    parts = [WEIGHTED_PART.fullmatch(part) for part in method.split("+")]
    return all(m and m[1] and m[2] in FORECASTS for m in parts) and len({m[2] for m in parts}) == len(parts)


def defaults() -> dict:
    """Return the module's settings (its type-annotated UPPER_CASE constants) as a dict."""
    return {k: globals()[k] for k in __annotations__ if k.isupper()}


def help_text() -> str:
    """Every setting with its type, default and comment, grouped by section as written in this file."""
    lines = ["Usage: python ttm_model.py [--KEY=value ...]   (also TTM_KEY=value variables and --ENV_FILE=file)", ""]
    setting = re.compile(r"^([A-Z][A-Z0-9_]*): (\w+) = (.+?)  # (.*)$")
    for line in Path(__file__).read_text(encoding="utf-8").splitlines():
        if line.startswith("# --- "):
            lines += ["", line.strip("# -").strip().capitalize()]
        elif match := setting.match(line):
            key, kind, default, comment = match.groups()
            lines.append(f"  --{key}={default}  ({kind})\n      {comment}")
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def _cast_names(key: str, raw: str, source: str) -> tuple:
    """A tuple of names from "a,b", "a, b" or a Python literal such as ('a', 'b')."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (tuple, list)):
        value = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not all(isinstance(part, str) for part in value):
        raise ValueError(f"{source}: {key} must be a comma-separated list of names, got {raw!r}")
    return tuple(value)


def _cast(key: str, raw: str, default: object, source: str) -> object:
    """Turn the text `raw` into a value of the same type as `default`."""
    if isinstance(default, tuple):
        return _cast_names(key, raw, source)
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{source}: {key} must be True or False, got {raw!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(default, str):
        return value if isinstance(value, str) else raw
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


def _names(value: tuple, low: int, high: int) -> bool:
    return low <= len(value) <= high and all(v.strip() for v in value) and len(set(value)) == len(value)


def _at_least(low: int) -> tuple[Callable, str]:
    return (lambda v: v >= low), f"an integer >= {low}"


# What each setting allows beyond its type.
RULES = {  # key -> (test, the allowed values in words)
    "MODE": (lambda v: v in ("train", "predict"), "'train' or 'predict'"),
    "SEED": _at_least(0),
    "LOG_LEVEL": (lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"),
    "DATA_PATH": (lambda v: bool(v.strip()), "a CSV path"),
    "DATE_COLUMN": (lambda v: bool(v.strip()), "a column name"),
    "ID_COLUMNS": (lambda v: _names(v, 1, 3), "1 to 3 distinct, non-empty column names"),
    "TARGET_COLUMNS": (lambda v: _names(v, 1, 99), "1 or more distinct, non-empty column names"),
    "CONTROL_COLUMNS": (lambda v: _names(v, 0, 99), "distinct, non-empty column names (or none)"),
    "FUTURE_PATH": (lambda v: bool(v.strip()), "a CSV path"),
    "HOLIDAY_COUNTRY": (lambda v: v == "" or re.fullmatch(r"[A-Z]{2,3}", v), "'' or a country code such as BR, US"),
    "CATEGORICAL_COLUMNS": (lambda v: _names(v, 0, 3), "0 to 3 of the ID_COLUMNS"),
    "WEEK_ANCHOR": (lambda v: v == "auto" or v in [f"W-{d}" for d in WEEKDAYS], "'auto' or W-MON .. W-SUN"),
    "GAP_WEEKS": (lambda v: v >= 0, "an integer >= 0 (0 = weeks without rows are always 0)"),
    "BACKTEST_ORIGINS": _at_least(1),
    "BACKTEST_STEP": (lambda v: v >= 0, "an integer >= 0 (0 = PREDICTION_LENGTH)"),
    "MIN_CONTEXT_WEEKS": _at_least(1),
    "TRAIN_STRIDE": _at_least(1),
    "MAX_TRAIN_WINDOWS": (lambda v: v >= 0, "an integer >= 0 (0 = all windows every epoch)"),
    "MAX_VALID_WINDOWS": (lambda v: v >= 0, "an integer >= 0 (0 = every series' validation window)"),
    "PRETRAINED_MODEL": (lambda v: bool(v.strip()), "a hub id or a local folder"),
    "CONTEXT_LENGTH": _at_least(1),
    "PREDICTION_LENGTH": _at_least(1),
    "TRAINABLE_LAYERS": (lambda v: _names(v, 1, 99), "1 or more parameter-name parts such as decoder*fc1"),
    "LEARNING_RATE": (lambda v: math.isfinite(v) and v > 0, "a number > 0, e.g. 0.003"),
    "WEIGHT_DECAY": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "NUM_TRAIN_EPOCHS": _at_least(1),
    "BATCH_SIZE": _at_least(1),
    "EARLY_STOPPING_PATIENCE": _at_least(0),
    "NUM_WORKERS": _at_least(0),
    "MIN_FREE_DISK_MB": _at_least(0),
    "PREDICT_PART_ROWS": _at_least(100),
    "GBM_TREES": _at_least(0),
    "GBM_MAX_ROWS": _at_least(0),
    "FORECAST_METHOD": (
        lambda v: v == "auto" or known_method(v),
        f"auto, one of {', '.join(METHODS)}, or weights such as 0.7*gbm+0.3*fine_tuned",
    ),
    "INTERVAL_LEVEL": (lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive), e.g. 0.8"),
    "PLOT_TOP_SERIES": _at_least(0),
    "RESULTS_DIR": (lambda v: bool(v.strip()), "a folder path"),
    "FINAL_MODEL_DIR": (lambda v: bool(v.strip()), "a folder path"),
}


def validate(settings: Mapping) -> None:
    """Check each value against RULES and the settings against each other.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    for key, (allowed, words) in RULES.items():
        if not allowed(settings[key]):
            raise ValueError(f"{key}={settings[key]!r} is not allowed: use {words}")
    _check_roles(settings)
    if settings["GBM_TREES"] == 0 and "gbm" in settings["FORECAST_METHOD"]:
        raise ValueError(f"FORECAST_METHOD={settings['FORECAST_METHOD']!r} needs the gbm; set GBM_TREES > 0")
    if Path(settings["RESULTS_DIR"]).resolve() == Path(settings["FINAL_MODEL_DIR"]).resolve():
        raise ValueError("RESULTS_DIR and FINAL_MODEL_DIR are the same folder; give each its own")


def _check_roles(settings: Mapping) -> None:
    """Each column has one role: date, id, target or driver; categorical columns are ids."""
    date, ids, targets = settings["DATE_COLUMN"], settings["ID_COLUMNS"], settings["TARGET_COLUMNS"]
    for name, clash in ((date, "DATE_COLUMN"), *((t, "TARGET_COLUMNS") for t in targets)):
        if name in ids:
            raise ValueError(f"{clash} and ID_COLUMNS both name column {name!r}; a column has one role")
    if date in targets:
        raise ValueError(f"DATE_COLUMN={date!r} is also in TARGET_COLUMNS; the date cannot be forecast")
    for name in settings["CONTROL_COLUMNS"]:
        if name in (date, *ids, *targets):
            raise ValueError(f"CONTROL_COLUMNS names {name!r}, already the date, an id or a target; one role each")
    unknown = [name for name in settings["CATEGORICAL_COLUMNS"] if name not in ids]
    if unknown:
        raise ValueError(f"CATEGORICAL_COLUMNS={unknown} are not in ID_COLUMNS={list(ids)}; use id columns")


def resolve(argv: Sequence[str], environ: Mapping[str, str]) -> SimpleNamespace:
    """The checked settings after applying ENV_FILE, TTM_* variables and --KEY=value arguments, in that order."""
    known = defaults()
    cli = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"command line: expected --KEY=value (or --help), got {arg!r}")
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
    validate(settings)
    return SimpleNamespace(**settings)
