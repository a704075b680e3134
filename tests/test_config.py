import re
import subprocess
import sys

import pytest
from conftest import ROOT

import config


def test_defaults_match_design_card():
    cfg = config.resolve([], {})
    assert (cfg.CONTEXT_LENGTH, cfg.PREDICTION_LENGTH, cfg.EARLY_STOPPING_PATIENCE) == (104, 26, 15)
    assert cfg.TARGET_COLUMNS == ("vendas", "faturamento")
    assert cfg.TRAINABLE_LAYERS == ("decoder*fc1", "decoder*fc2", "head")  # fc1/fc2 of the decoder, and the head


def test_precedence_env_file_env_cli(tmp_path):
    env_file = tmp_path / "quick.env"
    env_file.write_text("# comment\nBATCH_SIZE=8\nSEED=1\nLEARNING_RATE=0.01\n")
    cfg = config.resolve([f"--ENV_FILE={env_file}", "--SEED=3"], {"TTM_SEED": "2", "TTM_LEARNING_RATE": "1"})
    assert cfg.BATCH_SIZE == 8  # env file
    assert cfg.LEARNING_RATE == 1.0 and isinstance(cfg.LEARNING_RATE, float)  # env var beats file; int widened
    assert cfg.SEED == 3  # command line beats all
    assert config.SEED == 42  # module untouched


def test_tuple_takes_comma_list_and_literal():
    assert config.resolve(["--TARGET_COLUMNS=faturamento"], {}).TARGET_COLUMNS == ("faturamento",)
    assert config.resolve(["--TRAINABLE_LAYERS=fc1, fc2,head"], {}).TRAINABLE_LAYERS == ("fc1", "fc2", "head")
    assert config.resolve(["--TRAINABLE_LAYERS=('head',)"], {}).TRAINABLE_LAYERS == ("head",)


def test_strings_and_bools():
    cfg = config.resolve(["--DATA_PATH=/tmp/x.csv", "--USE_CPU=true", "--DEBUG=False"], {})
    assert cfg.DATA_PATH == "/tmp/x.csv" and cfg.USE_CPU is True and cfg.DEBUG is False


def test_unknown_key_names_closest():
    with pytest.raises(
        ValueError, match=r"command line: unknown setting 'LEARNIG_RATE'; did you mean LEARNING_RATE\?"
    ):
        config.resolve(["--LEARNIG_RATE=0.1"], {})
    with pytest.raises(ValueError, match=r"environment \(TTM_\*\): unknown setting 'BATCH'"):
        config.resolve([], {"TTM_BATCH": "3"})


def test_type_errors_are_explained():
    with pytest.raises(ValueError, match=r"BATCH_SIZE must be int \(default 64\), got 'big'"):
        config.resolve(["--BATCH_SIZE=big"], {})
    with pytest.raises(ValueError, match=r"EPOCHS must be int.*got '1.5'"):
        config.resolve(["--NUM_TRAIN_EPOCHS=1.5"], {})
    with pytest.raises(ValueError, match="USE_CPU must be True or False"):
        config.resolve(["--USE_CPU=maybe"], {})
    with pytest.raises(ValueError, match=r"expected --KEY=value \(or --help\), got 'SEED'"):
        config.resolve(["SEED"], {})


# One bad value for every setting of config.py: (value on the command line, words the one-line error must hold).
BAD_VALUES = {
    "MODE": ("serve", "MODE='serve' is not allowed: use 'train' or 'predict'"),
    "SEED": ("-1", "SEED=-1 is not allowed: use an integer >= 0"),
    "LOG_LEVEL": ("LOUD", "LOG_LEVEL='LOUD' is not allowed"),
    "DEBUG": ("maybe", "DEBUG must be True or False"),
    "FRESH_START": ("2", "FRESH_START must be True or False"),
    "USE_CPU": ("gpu", "USE_CPU must be True or False"),
    "GATHER_ON_GPU": ("cpu", "GATHER_ON_GPU must be True or False"),
    "DATA_PATH": ("' '", "DATA_PATH=' ' is not allowed: use a CSV path"),
    "DATE_COLUMN": ("vendas", "DATE_COLUMN='vendas' is also in TARGET_COLUMNS"),
    "ID_COLUMNS": ("a,b,c,d", "ID_COLUMNS=('a', 'b', 'c', 'd') is not allowed: use 1 to 3 distinct"),
    "TARGET_COLUMNS": ("vendas,vendas", "TARGET_COLUMNS=('vendas', 'vendas') is not allowed: use 1 or more distinct"),
    "CONTROL_COLUMNS": ("preco,vendas", "CONTROL_COLUMNS names 'vendas', already the date, an id or a target"),
    "FUTURE_PATH": ("' '", "FUTURE_PATH=' ' is not allowed: use a CSV path"),
    "HOLIDAY_COUNTRY": ("brasil", "HOLIDAY_COUNTRY='brasil' is not allowed: use '' or a country code"),
    "CATEGORICAL_COLUMNS": ("canal", "CATEGORICAL_COLUMNS=['canal'] are not in ID_COLUMNS"),
    "WEEK_ANCHOR": ("W-XYZ", "WEEK_ANCHOR='W-XYZ' is not allowed: use 'auto' or W-MON .. W-SUN"),
    "GAP_WEEKS": ("-1", "GAP_WEEKS=-1 is not allowed: use an integer >= 0 (0 = weeks without rows are always 0)"),
    "DRIVER_EFFECT": ("maybe", "DRIVER_EFFECT must be True or False"),
    "BACKTEST_ORIGINS": ("0", "BACKTEST_ORIGINS=0 is not allowed: use an integer >= 1"),
    "BACKTEST_STEP": ("-26", "BACKTEST_STEP=-26 is not allowed: use an integer >= 0 (0 = PREDICTION_LENGTH)"),
    "FORECAST_METHOD": ("best", "FORECAST_METHOD='best' is not allowed: use auto, one of zero_shot, fine_tuned"),
    "GBM_TREES": ("-1", "GBM_TREES=-1 is not allowed: use an integer >= 0"),
    "GBM_MAX_ROWS": ("-5", "GBM_MAX_ROWS=-5 is not allowed: use an integer >= 0"),
    "MIN_CONTEXT_WEEKS": ("0", "MIN_CONTEXT_WEEKS=0 is not allowed: use an integer >= 1"),
    "TRAIN_STRIDE": ("0", "TRAIN_STRIDE=0 is not allowed: use an integer >= 1"),
    "MAX_VALID_WINDOWS": ("-1", "MAX_VALID_WINDOWS=-1 is not allowed: use an integer >= 0"),
    "MAX_TRAIN_WINDOWS": ("-5", "MAX_TRAIN_WINDOWS=-5 is not allowed: use an integer >= 0"),
    "PRETRAINED_MODEL": ("''", "PRETRAINED_MODEL='' is not allowed: use a hub id or a local folder"),
    "CONTEXT_LENGTH": ("0", "CONTEXT_LENGTH=0 is not allowed: use an integer >= 1"),
    "PREDICTION_LENGTH": ("0", "PREDICTION_LENGTH=0 is not allowed: use an integer >= 1"),
    "PREFER_L1_LOSS": ("l1", "PREFER_L1_LOSS must be True or False"),
    "TRAINABLE_LAYERS": ("()", "TRAINABLE_LAYERS=() is not allowed: use 1 or more parameter-name parts"),
    "LEARNING_RATE": ("-0.001", "LEARNING_RATE=-0.001 is not allowed: use a number > 0"),
    "WEIGHT_DECAY": ("-1", "WEIGHT_DECAY=-1.0 is not allowed: use a number >= 0"),
    "NUM_TRAIN_EPOCHS": ("0", "NUM_TRAIN_EPOCHS=0 is not allowed: use an integer >= 1"),
    "BATCH_SIZE": ("0", "BATCH_SIZE=0 is not allowed: use an integer >= 1"),
    "EARLY_STOPPING_PATIENCE": ("-1", "EARLY_STOPPING_PATIENCE=-1 is not allowed: use an integer >= 0"),
    "NUM_WORKERS": ("-2", "NUM_WORKERS=-2 is not allowed: use an integer >= 0"),
    "MIN_FREE_DISK_MB": ("-1", "MIN_FREE_DISK_MB=-1 is not allowed: use an integer >= 0"),
    "PREDICT_PART_ROWS": ("50", "PREDICT_PART_ROWS=50 is not allowed: use an integer >= 100"),
    "INTERVAL_LEVEL": ("1.5", "INTERVAL_LEVEL=1.5 is not allowed: use a number between 0 and 1"),
    "PLOT_TOP_SERIES": ("-1", "PLOT_TOP_SERIES=-1 is not allowed: use an integer >= 0"),
    "RESULTS_DIR": ("final_ttm_model", "RESULTS_DIR and FINAL_MODEL_DIR are the same folder"),
    "FINAL_MODEL_DIR": ("''", "FINAL_MODEL_DIR='' is not allowed: use a folder path"),
}


def test_every_setting_has_a_bad_value_case():
    assert set(BAD_VALUES) == set(config.defaults())


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_bad_value_is_refused_with_key_value_and_allowed(key):
    raw, words = BAD_VALUES[key]
    with pytest.raises(ValueError) as err:
        config.resolve([f"--{key}={raw}"], {})
    assert words in str(err.value)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--ID_COLUMNS=produto_cat,vendas"], "TARGET_COLUMNS and ID_COLUMNS both name column 'vendas'"),
        (["--DATE_COLUMN=uf_cat"], "DATE_COLUMN and ID_COLUMNS both name column 'uf_cat'"),
        (["--LEARNING_RATE=nan"], "LEARNING_RATE must be float"),
        (["--TARGET_COLUMNS=(1, 2)"], "TARGET_COLUMNS must be a comma-separated list of names"),
        (["--CONTROL_COLUMNS=preco,preco"], "CONTROL_COLUMNS=('preco', 'preco') is not allowed"),
    ],
)
def test_settings_that_clash(argv, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        config.resolve(argv, {})


def test_good_edge_values_pass():
    cfg = config.resolve(["--EARLY_STOPPING_PATIENCE=0", "--MAX_TRAIN_WINDOWS=0", "--WEEK_ANCHOR=W-WED"], {})
    assert cfg.EARLY_STOPPING_PATIENCE == 0 and cfg.WEEK_ANCHOR == "W-WED"
    assert config.resolve(["--ID_COLUMNS=loja,sku,canal", "--TARGET_COLUMNS=receita"], {}).ID_COLUMNS == (
        "loja",
        "sku",
        "canal",
    )


def test_help_lists_every_setting_with_default_type_and_comment():
    text = config.help_text()
    for key, default in config.defaults().items():
        assert f"--{key}=" in text, key
    assert "--BATCH_SIZE=64  (int)\n      windows per step (train and eval)" in text
    assert "\n5. training\n" in text and text.index("0. run") < text.index("5. training")


def test_cli_help_and_bad_setting_in_our_log_format(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "ttm_model.py"), "-h"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "--LEARNING_RATE=3e-3  (float)" in run.stdout
    run = subprocess.run(
        [sys.executable, str(ROOT / "ttm_model.py"), "--LEARNING_RATE=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ ERROR ttm_model: LEARNING_RATE=-1.0 is not allowed: .*", lines[0])


def test_forecast_method_names_one_of_the_backtest_methods():
    assert config.resolve(["--FORECAST_METHOD=fine_tuned+seasonal_naive"], {}).FORECAST_METHOD in config.METHODS
    with pytest.raises(ValueError, match=r"FORECAST_METHOD='seasonal_naive\+fine_tuned' is not allowed"):
        config.resolve(["--FORECAST_METHOD=seasonal_naive+fine_tuned"], {})  # blends are named in one order


def test_forecast_method_takes_explicit_weights_and_needs_the_gbm_for_gbm():
    chosen = config.resolve(["--FORECAST_METHOD=0.7*gbm+0.3*fine_tuned"], {}).FORECAST_METHOD
    assert chosen == "0.7*gbm+0.3*fine_tuned"
    for bad in ("0.7*gbm+fine_tuned", "0.5*gbm+0.5*gbm", "0.5*gbm+0.5*prophet"):
        with pytest.raises(ValueError, match="is not allowed"):
            config.resolve([f"--FORECAST_METHOD={bad}"], {})
    with pytest.raises(ValueError, match="needs the gbm; set GBM_TREES > 0"):
        config.resolve(["--FORECAST_METHOD=gbm+fine_tuned", "--GBM_TREES=0"], {})


def test_every_setting_belongs_to_one_typed_group_or_to_the_run():
    import dataclasses

    from sales_forecast.settings import Settings

    grouped = [f.name.upper() for g in dataclasses.fields(Settings) for f in dataclasses.fields(g.type)]
    run = {"MODE", "LOG_LEVEL", "DEBUG", "FRESH_START"}  # read by main() only, never saved with the model
    assert sorted(grouped) == sorted(set(grouped)) and set(grouped) | run == set(config.defaults())
    settings = Settings.of(vars(config.resolve(["--TARGET_COLUMNS=faturamento"], {})))
    assert settings.data.target_columns == ("faturamento",) and settings.model.prediction_length == 26
    assert Settings.of(settings.as_config()) == settings  # what settings.json records reads back the same
