"""Known-future drivers: control columns, the future file, holiday flags, categories, and what-if forecasts."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HORIZON, run_args, settings_for

import ttm_model
from sales_forecast.artifacts import load_artifacts
from sales_forecast.drivers import HOLIDAY, add_drivers, future_controls, holiday_flags
from sales_forecast.model import build_model
from sales_forecast.panel import resample_weekly
from sales_forecast.sales_csv import InputError, read_sales_csv
from sales_forecast.scaling import fit_and_scale, fit_driver_scaling

IDS, TARGETS, CONTROLS = ("produto_cat", "uf_cat"), ("vendas", "faturamento"), ("preco", "promocao")

PARTS = "--PREDICT_PART_ROWS=200"  # predict mode splits promo_panel's 720 rows into 4 parts


def promo_panel(n_weeks: int = 120, future_weeks: int = HORIZON, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Six series whose units triple in promotion weeks (price 20% off), and the future file of their drivers."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2022-01-02", periods=n_weeks + future_weeks, freq="W-SUN")
    frames = []
    for p in range(3):
        for uf in ("SP", "RJ"):
            promo = (rng.random(len(dates)) < 0.2).astype(float)
            price = np.round((4.0 + p) * np.where(promo == 1, 0.8, 1.0), 2)
            units = rng.poisson(40 * (1 + p) * np.where(promo == 1, 3.0, 1.0)).astype(float)
            frames.append(
                pd.DataFrame(
                    {
                        "date": dates,
                        "produto_cat": f"P{p}",
                        "uf_cat": uf,
                        "vendas": units,
                        "faturamento": np.round(units * price, 2),
                        "preco": price,
                        "promocao": promo,
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)
    history = df[df["date"] <= dates[n_weeks - 1]]
    return history, df[df["date"] > dates[n_weeks - 1]].drop(columns=list(TARGETS))


def _weekly(history: pd.DataFrame):
    return resample_weekly(
        history, date_column="date", id_columns=IDS, target_columns=TARGETS, control_columns=CONTROLS
    )[0]


def _with_future(history, future, **kw):
    settings = {"horizon": HORIZON, "holiday_country": "", "categorical": (), "date_column": "date"}
    return add_drivers(_weekly(history), future, **settings | kw, future_path="futuro.csv")


def test_control_columns_read_like_targets_with_decimal_comma_and_negatives(tmp_path):
    path = tmp_path / "vendas.csv"
    path.write_text(
        "date;produto_cat;uf_cat;vendas;faturamento;preco;temperatura\n"
        "2024-01-07;A;SP;10;35,5;3,55;-2,5\n2024-01-14;A;SP;12;42,6;3,55;1,0\n",
        encoding="utf-8",
    )
    kw = {"date_column": "date", "id_columns": IDS, "target_columns": TARGETS}
    df = read_sales_csv(str(path), **kw, control_columns=("preco", "temperatura"))
    np.testing.assert_allclose(df["preco"], [3.55, 3.55])
    np.testing.assert_allclose(df["temperatura"], [-2.5, 1.0])
    path.write_text(
        "date,produto_cat,uf_cat,vendas,faturamento,preco\n2024-01-07,A,SP,10,35.5,3.55\n2024-01-14,A,SP,12,42.6,\n"
    )
    with pytest.raises(InputError, match=r"column 'preco' has missing values .* at line\(s\) 3"):
        read_sales_csv(str(path), **kw, control_columns=("preco",))


def test_weeks_without_rows_get_flag_zero_and_the_last_price():
    history, _ = promo_panel(n_weeks=10)
    one = history[(history["produto_cat"] == "P0") & (history["uf_cat"] == "SP")].copy()
    one.loc[one.index[3], "promocao"] = 1.0
    one.loc[one.index[3], "preco"] = 3.2
    one = one.drop(index=one.index[4:6])  # weeks 5 and 6 have no row
    panel = _weekly(one)
    np.testing.assert_array_equal(panel.drivers[0, 3:7, 1], [1.0, 0.0, 0.0, one["promocao"].iloc[4]])
    np.testing.assert_allclose(panel.drivers[0, 4:6, 0], [3.2, 3.2])  # carried from week 4
    assert panel.driver_names == CONTROLS


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda f: f[f["produto_cat"] != "P2"], r"futuro.csv: 2 series lack rows .*'produto_cat': 'P2'"),
        (lambda f: f.drop(index=f.index[2]), r"1 series lack rows .*'uf_cat': 'SP'.* weeks \['2023-04-30'\]"),
        (
            lambda f: pd.concat([f, f.head(1).assign(produto_cat="P9")]),
            r"1 row\(s\) with series that are not in the data, line\(s\) 50",
        ),
        (
            lambda f: f.assign(date=f["date"] + pd.Timedelta(weeks=1)),
            r"row\(s\) with dates outside the 8 weeks 2023-04-16..2023-06-04",
        ),
        (lambda f: pd.concat([f, f.tail(1)]), r"1 repeated \(series, week\) row\(s\), line\(s\) 50"),
    ],
)
def test_future_file_errors_name_file_series_and_weeks(change, words):
    history, future = promo_panel(n_weeks=67)
    with pytest.raises(InputError, match=words):
        future_controls(
            _weekly(history),
            change(future).reset_index(drop=True),
            horizon=HORIZON,
            date_column="date",
            path="futuro.csv",
        )


def test_future_file_missing_is_named_with_its_setting(tmp_path, model_dir):
    history, _ = promo_panel()
    history.to_csv(tmp_path / "vendas.csv", index=False)
    args = run_args(tmp_path, model_dir, tmp_path / "vendas.csv", "--CONTROL_COLUMNS=preco,promocao")
    with pytest.raises(FileNotFoundError, match=r"futuro.csv: file not found; set --FUTURE_PATH="):
        ttm_model.run_train(settings_for(args), fresh_start=False, synthetic_if_missing=False, warnings=[])


def test_holiday_flags_per_uf_and_national():
    dates = pd.date_range("2024-06-30", periods=28, freq="W-SUN")
    keys = pd.DataFrame({"produto_cat": ["A", "A"], "uf_cat": ["SP", "RJ"]})
    flags = holiday_flags(keys, dates, "BR")
    week = {d.strftime("%Y-%m-%d"): i for i, d in enumerate(dates)}
    assert flags[0, week["2024-07-14"]] == 1 and flags[1, week["2024-07-14"]] == 0  # 9 July: São Paulo only
    assert flags[:, week["2024-12-29"]].tolist() == [1, 1]  # Christmas: everyone
    assert flags[:, week["2024-07-07"]].tolist() == [0, 0]
    national = holiday_flags(pd.DataFrame({"loja": ["1", "2"]}), dates, "BR")
    assert national[:, week["2024-07-14"]].tolist() == [0, 0] and national[:, week["2024-12-29"]].tolist() == [1, 1]
    with pytest.raises(InputError, match="HOLIDAY_COUNTRY=XX: not a country the holidays package knows"):
        holiday_flags(keys, dates, "XX")


def test_computed_drivers_are_not_asked_of_the_future_file():
    history, future = promo_panel()
    panel = _with_future(history, future, holiday_country="BR")
    assert panel.driver_names == (*CONTROLS, HOLIDAY.name) and panel.control_columns == CONTROLS
    assert [driver.computed for driver in panel.driver_specs] == [False, False, True]


def test_driver_scaling_keeps_shares_and_puts_prices_relative_to_the_series():
    history, future = promo_panel()
    panel = _with_future(history, future, categorical=("uf_cat",))
    scaling = fit_driver_scaling(panel, fit_end=np.full(len(panel.keys), len(panel.dates)))
    assert scaling.kinds == ("log", "share")
    drivers, codes = scaling.apply(panel)
    np.testing.assert_array_equal(drivers[..., 1], panel.drivers[..., 1])  # promotion flags as they are
    price = drivers[..., 0]
    assert np.abs(price[:, : len(panel.dates)].mean(1)).max() < 1e-5  # centred on each series' own price
    cut = panel.drivers[..., 1] == 1  # a 20% cut is the same size whatever the price level
    gaps = [price[s, ~cut[s]].max() - price[s, cut[s]].min() for s in range(len(panel.keys))]
    np.testing.assert_allclose(gaps, -np.log(0.8) / scaling.spread[0], rtol=1e-4)
    assert codes[:, 0].tolist() == [0, 1] * 3  # series RJ, SP of each product; codes in sorted order
    unseen = dataclasses.replace(panel, keys=panel.keys.assign(uf_cat=["SP", "BA"] * 3))
    assert scaling.apply(unseen)[1][:, 0].tolist() == [1, 2] * 3  # BA, unseen: the "unknown" code


def test_the_drivers_effect_is_fitted_on_training_weeks_divided_out_and_multiplied_back():
    history, future = promo_panel()  # promotion weeks: units x3 at a 20% lower price, revenue x2.4
    panel = _with_future(history, future)
    fit_end = np.full(len(panel.keys), len(panel.dates) - 30)
    scaling = fit_driver_scaling(panel, fit_end=fit_end, effect=True)
    factor = scaling.factor(panel, scaling.apply(panel)[0])  # (series, weeks + future weeks, targets)
    promo = panel.drivers[..., 1] == 1
    np.testing.assert_allclose(factor[promo].mean(0) / factor[~promo].mean(0), [3.0, 2.4], rtol=0.05)
    later = dataclasses.replace(
        panel, values=panel.values * np.where(np.arange(len(panel.dates)) < fit_end[0], 1, 9)[:, None]
    )
    np.testing.assert_array_equal(fit_driver_scaling(later, fit_end=fit_end, effect=True).effect, scaling.effect)
    assert fit_driver_scaling(panel, fit_end=fit_end).effect is None  # DRIVER_EFFECT=False
    weeks = len(panel.dates)
    for effect, gap in ((True, (0.0, 0.3)), (False, (1.0, 9.0))):  # scaled vendas: promotion weeks minus the others
        _, data = fit_and_scale(panel, fit_end=fit_end, driver_effect=effect)
        lift = data.values[..., 0][promo[:, :weeks]].mean() - data.values[..., 0][~promo[:, :weeks]].mean()
        assert gap[0] <= abs(lift) < gap[1]
        windows = (np.arange(len(panel.keys)), np.full(len(panel.keys), weeks - HORIZON))
        back = data.scaling.invert(data.values[:, weeks - HORIZON :], windows)
        np.testing.assert_allclose(back, panel.values[:, weeks - HORIZON :], rtol=1e-9, atol=1e-9)


def test_each_series_has_its_own_effect_not_extrapolated_beyond_its_training_weeks():
    history, future = promo_panel()
    strong = (history["produto_cat"] == "P2") & (history["promocao"] == 1)
    history.loc[strong, ["vendas", "faturamento"]] *= 2  # P2 sells 6x on promotion, the others 3x
    future.loc[future["produto_cat"] == "P0", "preco"] *= 3  # a price P0 never had
    panel = _with_future(history, future)
    scaling = fit_driver_scaling(panel, fit_end=np.full(len(panel.keys), len(panel.dates)), effect=True)
    encoded = scaling.apply(panel)[0]
    factor = scaling.factor(panel, encoded)
    promo, weeks = panel.drivers[..., 1] == 1, len(panel.dates)
    lift = np.array(
        [
            factor[s, :weeks][promo[s, :weeks], 0].mean() / factor[s, :weeks][~promo[s, :weeks], 0].mean()
            for s in range(6)
        ]
    )
    p2 = (panel.keys["produto_cat"] == "P2").to_numpy()
    assert lift[p2].min() > 4.5 and lift[~p2].max() < 3.6  # shrunk towards the pooled lift, ~3.9
    pooled = np.clip((encoded - scaling.centre) @ scaling.effect, -3, 3)
    for s in np.flatnonzero((panel.keys["produto_cat"] == "P0").to_numpy()):
        own = np.log(factor[s, weeks:, 0]) - pooled[s, weeks:, 0]
        low, high = scaling.own[tuple(panel.keys.iloc[s])][1][:, 0]
        assert (own >= low - 1e-9).all() and (own <= high + 1e-9).all()


def test_targets_only_backbone_gives_the_same_forecast_and_starts_at_pretrained(model_dir):
    torch.manual_seed(0)
    kw = {"context_length": 104, "prediction_length": HORIZON, "prefer_l1": True, "num_channels": 2}
    plain = build_model(model_dir, **kw).eval()
    driven = build_model(model_dir, **kw, num_drivers=3).eval()
    assert driven.backbone._forward_pre_hooks and not plain.backbone._forward_pre_hooks
    full = build_model(model_dir, **kw, num_drivers=3).eval()
    full.load_state_dict(driven.state_dict())
    full.backbone._forward_pre_hooks.clear()  # granite's own path: every channel encoded and decoded
    torch.nn.init.normal_(driven.head.fcm_block.mlp.weight)  # a trained mixer, so that drivers count
    full.load_state_dict(driven.state_dict())
    past, future = torch.randn(4, 90, 5), torch.randn(4, HORIZON, 5)
    inputs = {"past_values": past, "future_values": future, "freq_token": torch.full((4,), 9), "return_loss": False}
    with torch.no_grad():
        torch.testing.assert_close(
            driven(**inputs).prediction_outputs, full(**inputs).prediction_outputs, rtol=1e-5, atol=1e-5
        )
        torch.nn.init.zeros_(driven.head.fcm_block.mlp.weight)
        torch.nn.init.zeros_(driven.head.fcm_block.mlp.bias)
        pretrained = plain(past_values=past[..., :2], freq_token=inputs["freq_token"]).prediction_outputs
        torch.testing.assert_close(driven(**inputs).prediction_outputs, pretrained)


def test_no_drivers_builds_the_plain_model(tmp_path, model_dir):
    history, _ = promo_panel()
    history.drop(columns=list(CONTROLS)).to_csv(tmp_path / "vendas.csv", index=False)
    args = run_args(tmp_path, model_dir, tmp_path / "vendas.csv", "--HOLIDAY_COUNTRY=", "--BACKTEST_ORIGINS=1")
    ttm_model.main(args)
    saved = load_artifacts(tmp_path / "final", method="fine_tuned")
    assert not saved.models["fine_tuned"].config.enable_forecast_channel_mixing
    assert saved.settings["CONTROL_COLUMNS"] == [] and saved.drivers.kinds == ()


@pytest.fixture(scope="module", params=[False, True], ids=["fcm_only", "driver_effect"])
def promo_run(request, tmp_path_factory, model_dir):
    """A run on promo_panel, its future file and metrics: the drivers reach the forecast through the trained
    forecast channel mixing alone, or also through their effect divided out of the targets (DRIVER_EFFECT)."""
    tmp = tmp_path_factory.mktemp("promo")
    history, future = promo_panel()
    history.to_csv(tmp / "vendas.csv", index=False)
    future.to_csv(tmp / "futuro.csv", index=False)
    args = run_args(
        tmp,
        model_dir,
        tmp / "vendas.csv",
        "--CONTROL_COLUMNS=preco,promocao",
        f"--FUTURE_PATH={tmp / 'futuro.csv'}",
        "--FORECAST_METHOD=fine_tuned",
        "--BACKTEST_ORIGINS=1",
        "--NUM_TRAIN_EPOCHS=6",
        "--MAX_TRAIN_WINDOWS=1024",
        "--HOLIDAY_COUNTRY=BR",
        f"--DRIVER_EFFECT={request.param}",
    )
    metrics = ttm_model.main(args)
    assert (load_artifacts(tmp / "final").drivers.effect is not None) == request.param
    assert load_artifacts(tmp / "final").settings["CONTROL_COLUMNS"] == list(CONTROLS)  # not the holiday flag
    return tmp, future, metrics


def test_what_if_a_promotion_raises_that_products_forecast(promo_run):
    tmp, future, metrics = promo_run
    assert metrics["refit_epochs"] > 0 or load_artifacts(tmp / "final").drivers.effect is not None  # a driver path
    base = pd.read_csv(tmp / "results" / "previsoes.csv")
    plan = future.copy()
    switched = plan["produto_cat"] == "P1"
    plan.loc[switched, "promocao"], plan.loc[switched, "preco"] = 1.0, 4.0  # P1 on promotion every week
    plan.to_csv(tmp / "futuro_promo.csv", index=False)
    predict = [
        "--MODE=predict",
        f"--DATA_PATH={tmp / 'vendas.csv'}",
        f"--FUTURE_PATH={tmp / 'futuro_promo.csv'}",
        f"--FINAL_MODEL_DIR={tmp / 'final'}",
        f"--RESULTS_DIR={tmp / 'whatif'}",
    ]
    ttm_model.main(predict)
    what_if = pd.read_csv(tmp / "whatif" / "previsoes.csv")
    was_off = (future["promocao"] == 0).to_numpy() & switched.to_numpy()
    lift = what_if["vendas"].to_numpy()[was_off] / base["vendas"].to_numpy()[was_off]
    assert np.median(lift) > 1.2  # the training data's lift is 3x
    np.testing.assert_allclose(what_if.loc[~switched.to_numpy(), "vendas"], base.loc[~switched.to_numpy(), "vendas"])


def test_predict_in_parts_reads_each_parts_future_drivers(promo_run, tmp_path):
    tmp, future, _ = promo_run
    argv = ["--MODE=predict", f"--DATA_PATH={tmp / 'vendas.csv'}", f"--FINAL_MODEL_DIR={tmp / 'final'}"]
    plan = future.sample(frac=1, random_state=0)
    plan.to_csv(tmp_path / "futuro.csv", index=False)
    ttm_model.main([*argv, f"--FUTURE_PATH={tmp_path / 'futuro.csv'}", f"--RESULTS_DIR={tmp_path / 'parts'}", PARTS])
    keys = ["produto_cat", "uf_cat", "date"]
    ours = pd.read_csv(tmp_path / "parts" / "previsoes.csv").sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(ours, pd.read_csv(tmp / "results" / "previsoes.csv"), rtol=1e-5)
    stray = pd.concat([plan, plan.head(1).assign(uf_cat="AM")])  # a series the data does not have, on line 50
    stray.to_csv(tmp_path / "futuro_extra.csv", index=False)
    argv += [f"--FUTURE_PATH={tmp_path / 'futuro_extra.csv'}", f"--RESULTS_DIR={tmp_path / 'stray'}", PARTS]
    with pytest.raises(
        InputError, match=r"futuro_extra.csv: 1 row\(s\) with series that are not in the data, line\(s\) 50 "
    ):
        ttm_model.run_predict(settings_for(argv), warnings=[])


def test_predict_measures_the_intervals_in_the_scale_the_backtest_chose(promo_run, tmp_path):
    """One backtest origin: nothing held out, the series' scale. The same folder saying the drivers' scale (as the
    backtest chooses where the drivers' factor explains the errors' size) keeps the points and moves the bounds with
    each week's factor: a promotion week's interval widens relative to the others'."""
    tmp, future, metrics = promo_run
    saved = load_artifacts(tmp / "final")
    assert metrics["interval_scale"] == saved.settings["INTERVAL_SCALE"] == "series"
    if saved.drivers.effect is None:
        return  # no factor: one scale
    final = tmp_path / "final"
    shutil.copytree(tmp / "final", final)
    settings = json.loads((final / "settings.json").read_text()) | {"INTERVAL_SCALE": "drivers"}
    (final / "settings.json").write_text(json.dumps(settings))
    manifest = json.loads((final / "manifest.json").read_text())
    manifest["sha256"]["settings.json"] = hashlib.sha256((final / "settings.json").read_bytes()).hexdigest()
    (final / "manifest.json").write_text(json.dumps(manifest))
    argv = ["--MODE=predict", f"--DATA_PATH={tmp / 'vendas.csv'}", f"--FUTURE_PATH={tmp / 'futuro.csv'}"]
    ttm_model.main([*argv, f"--FINAL_MODEL_DIR={final}", f"--RESULTS_DIR={tmp_path / 'out'}"])
    ours, theirs = pd.read_csv(tmp_path / "out" / "previsoes.csv"), pd.read_csv(tmp / "results" / "previsoes.csv")
    pd.testing.assert_series_equal(ours["vendas"], theirs["vendas"])
    keys = ["produto_cat", "uf_cat", "date"]
    promoted = ours[keys].merge(future.astype({"date": str}), on=keys, how="left")["promocao"].to_numpy() > 0
    width = (ours["vendas_upper"] - ours["vendas_lower"]) / (theirs["vendas_upper"] - theirs["vendas_lower"])
    assert not np.allclose(width, 1.0)
    assert width[promoted].mean() > width[~promoted].mean()


def test_predict_without_the_future_file_says_which_setting(promo_run, tmp_path):
    tmp, _, _ = promo_run
    predict = [
        "--MODE=predict",
        f"--DATA_PATH={tmp / 'vendas.csv'}",
        f"--FUTURE_PATH={tmp_path / 'nada.csv'}",
        f"--FINAL_MODEL_DIR={tmp / 'final'}",
        f"--RESULTS_DIR={tmp_path}",
    ]
    with pytest.raises(SystemExit):
        ttm_model.main(predict)


def test_categories_train_and_predict_with_an_unseen_value(tmp_path, model_dir):
    history, future = promo_panel(n_weeks=90)
    history.to_csv(tmp_path / "vendas.csv", index=False)
    future.to_csv(tmp_path / "futuro.csv", index=False)
    extra = ("--CONTROL_COLUMNS=promocao", f"--FUTURE_PATH={tmp_path / 'futuro.csv'}", "--CATEGORICAL_COLUMNS=uf_cat")
    ttm_model.main(run_args(tmp_path, model_dir, tmp_path / "vendas.csv", *extra, "--BACKTEST_ORIGINS=1"))
    saved = load_artifacts(tmp_path / "final", method="fine_tuned")
    assert saved.models["fine_tuned"].config.categorical_vocab_size_list == [3]
    history.assign(uf_cat=history["uf_cat"].replace("RJ", "BA")).to_csv(tmp_path / "novos.csv", index=False)
    future.assign(uf_cat=future["uf_cat"].replace("RJ", "BA")).to_csv(tmp_path / "futuro_novos.csv", index=False)
    out = ttm_model.main(
        [
            "--MODE=predict",
            f"--DATA_PATH={tmp_path / 'novos.csv'}",
            f"--FUTURE_PATH={tmp_path / 'futuro_novos.csv'}",
            f"--FINAL_MODEL_DIR={tmp_path / 'final'}",
            f"--RESULTS_DIR={tmp_path / 'novos'}",
        ]
    )
    assert out["n_new_series"] == 3
    assert np.isfinite(pd.read_csv(tmp_path / "novos" / "previsoes.csv")["vendas"]).all()
