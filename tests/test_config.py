import pytest

import config


def test_defaults_match_design_card():
    cfg = config.resolve([], {})
    assert (cfg.CONTEXT_LENGTH, cfg.PREDICTION_LENGTH, cfg.EARLY_STOPPING_PATIENCE) == (104, 26, 15)
    assert cfg.TARGET_COLUMNS == ("vendas", "faturamento") and cfg.TRAINABLE_LAYERS == ("decoder*fc1", "decoder*fc2")


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
    with pytest.raises(ValueError, match="expected --KEY=value, got 'SEED'"):
        config.resolve(["SEED"], {})
    with pytest.raises(ValueError, match="MODE must be 'train' or 'predict'"):
        config.resolve(["--MODE=serve"], {})
