"""Fine-tune IBM's TinyTimeMixer (TTM) on weekly sales (vendas) and revenue (faturamento) per product x UF.

    python ttm_model.py                                        # train, evaluate, forecast (synthetic data if no CSV)
    python ttm_model.py --help                                 # every setting, its default and meaning
    python ttm_model.py --DATA_PATH=dados/minha_base.csv --TARGET_COLUMNS=faturamento
    python ttm_model.py --PRETRAINED_MODEL=../shared/ttm-weights/ttm-90-30-ft-l1   # local model folder, offline
    python ttm_model.py --MODE=predict --DATA_PATH=novos.csv   # forecast with final_ttm_model/, no training

This file is the table of contents of a run: run_train calls one section after the other, (1) load, (2) weekly
resampling + per product-UF scaling, (3) split, (4) model, (5) backtest training, (6) selection, (7) refit and
forecast, (8) outputs; the backtest and refit orchestration follow it, then run_predict and main. Settings:
config.py. The work: the sales_forecast package, one module per job (its __init__ lists them).
"""

import contextlib
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from transformers import set_seed

import config
from sales_forecast.artifacts import check_output_dirs, load_artifacts, save_artifacts
from sales_forecast.distributed import compute_device, init_distributed, is_main_process
from sales_forecast.drivers import weekly_panel
from sales_forecast.evaluation import mase_scale, plot_results, plot_totals, write_metrics
from sales_forecast.forecast import forecast_future, method_forecasts, method_parts
from sales_forecast.gbm import fit_gbm
from sales_forecast.inputs import load_sales, predict_inputs
from sales_forecast.intervals import SCALES, interval_scales
from sales_forecast.model import DRIVER_BLOCKS, build_model, model_shape, unfreeze_only
from sales_forecast.panel import Panel, panel_until
from sales_forecast.report import collected_warnings, write_report
from sales_forecast.sales_csv import ForecastCsv, InputError, write_forecasts
from sales_forecast.scaling import ScaledPanel, fit_and_scale, scale_panel
from sales_forecast.selection import Choice, OriginResult, choose_methods, refit_epochs
from sales_forecast.settings import DataSettings, ModelSettings, Settings
from sales_forecast.totals import add_sums, backtest_totals, level_sums, totals_frame
from sales_forecast.training import fine_tune, make_trainer, resume_checkpoint, run_fingerprint
from sales_forecast.windows import Split, backtest_splits, refit_windows

logger = logging.getLogger("ttm_model")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPORT = "relatorio.html"  # the report page under RESULTS_DIR


class PhaseClock:
    """Wall time of the run's phases (seconds), for the log and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.seconds[phase], self._last = self.seconds.get(phase, 0.0) + now - self._last, now
        return self.seconds[phase]

    def __str__(self) -> str:
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
        return f"{sum(self.seconds.values()):.1f} s ({phases})"


def run_train(settings: Settings, *, fresh_start: bool, synthetic_if_missing: bool, warnings: list[str]) -> dict:
    """The training run, one named call per section; returns the metrics also written to metricas.json.
    synthetic_if_missing: train on a synthetic panel when there is no file at DATA_PATH (the default path only);
    warnings: the run's logged warnings, as they happen (for the report page)."""
    data, output, horizon = settings.data, settings.output, settings.model.prediction_length
    results, clock = Path(output.results_dir), PhaseClock()
    check_output_dirs([results, Path(output.final_model_dir).resolve().parent], output.min_free_disk_mb)
    sales, future = load_sales(  # 1
        data, horizon=horizon, seed=settings.train.seed, synthetic_dir=results if synthetic_if_missing else None
    )
    clock.lap("load")
    panel, anchor = weekly_panel(sales, future, data=data, horizon=horizon, source=data.data_path)  # 2
    splits = backtest_splits(panel, backtest=settings.backtest, horizon=horizon)  # 3
    clock.lap("preprocess")
    pretrained = build_model(settings.model.pretrained_model, **model_shape(settings.model, panel))  # 4
    zero_shot = copy.deepcopy(pretrained)  # the same pretrained weights, kept untouched for the comparison
    trainable = unfreeze_only(pretrained, (*settings.model.trainable_layers, *DRIVER_BLOCKS))
    resume = (run_fingerprint(settings, panel), fresh_start)
    clock.lap("model")
    origins = run_backtest(  # 5: per origin, early stopping on validation WAPE, then a refit up to the origin
        panel, splits, pretrained=pretrained, zero_shot=zero_shot, settings=settings, resume=resume
    )
    clock.lap("backtest")
    choice = choose_methods(  # 6
        origins,
        panel=panel,
        methods=candidates(settings),
        forced=output.forecast_method,
        level=output.interval_level,
        date_column=data.date_column,
    )
    totals, metrics_by_level = backtest_totals(
        origins, choice.selection, level=output.interval_level, targets=panel.targets
    )
    chosen = {part for method in choice.selection.values() for part in method_parts(method)}
    epochs = refit_epochs(origins) if "fine_tuned" in chosen else 0
    model, scalers, scaled = refit(  # 7: the final model on every week, then the forecast
        panel, pretrained=pretrained, epochs=epochs, settings=settings, out_dir=results / "refit", resume=resume
    )
    models = {"fine_tuned": model, "zero_shot": zero_shot}
    if "gbm" in chosen:
        models["gbm"] = fit_gbm(
            panel, trees=settings.train.gbm_trees, seed=settings.train.seed, max_rows=settings.train.gbm_max_rows
        )
    clock.lap("refit")
    forecast = forecast_future(
        models,
        scaled,
        choice.conformal,
        choice.selection,
        horizon=horizon,
        date_column=data.date_column,
        scale_kind=choice.interval_scale,
    )
    forecast_rate = len(panel.keys) / clock.lap("forecast")
    saved = settings.as_config() | {
        "WEEK_ANCHOR": anchor,
        "CONTROL_COLUMNS": panel.control_columns,
        "SELECTION": choice.selection,
        "INTERVAL_SCALE": choice.interval_scale,
    }
    metrics = {"trainable_fraction": trainable, "n_series": len(panel.keys), "refit_epochs": epochs, **choice.figures}
    metrics["totals"] = metrics_by_level
    metrics |= {"forecast_series_per_s": forecast_rate, "phase_seconds": clock.seconds}
    if is_main_process():  # 8: under torchrun every rank computed the same; rank 0 writes
        write_outputs(
            forecast,
            choice,
            panel,
            models,
            scalers,
            totals,
            settings=settings,
            saved=saved,
            metrics=metrics,
            clock=clock,
            warnings=warnings,
        )
    logger.info("Done in %s; report page: %s", clock, results / REPORT)
    return metrics


def candidates(settings: Settings) -> tuple[str, ...]:
    """The methods the backtest scores: config.METHODS, without those made with the gbm when GBM_TREES is 0."""
    return tuple(m for m in config.METHODS if settings.train.gbm_trees or "gbm" not in method_parts(m))


def run_backtest(
    panel: Panel,
    splits: Sequence[Split],
    *,
    pretrained: torch.nn.Module,
    zero_shot: torch.nn.Module,
    settings: Settings,
    resume: tuple[str, bool],
) -> list[OriginResult]:
    """Every origin of the backtest, in order (checkpoints under RESULTS_DIR/origin-N/)."""
    results = Path(settings.output.results_dir)
    return [
        backtest_origin(
            panel,
            split,
            pretrained=pretrained,
            zero_shot=zero_shot,
            settings=settings,
            out_dir=results / f"origin-{number}",
            resume=resume,
        )
        for number, split in enumerate(splits, start=1)
    ]


def backtest_origin(
    panel: Panel,
    split: Split,
    *,
    pretrained: torch.nn.Module,
    zero_shot: torch.nn.Module,
    settings: Settings,
    out_dir: Path,
    resume: tuple[str, bool],
) -> OriginResult:
    """One origin, done as the final model is: choose the epochs by early stopping on the validation window (scaled
    on the training weeks), refit on every week before the test window for those epochs, and forecast the test
    window with every method. Nothing from week split.test_start on is read but the actuals the forecasts are scored
    on. resume: (fingerprint, FRESH_START)."""
    history, horizon = panel_until(panel, split.test_start), split.end - split.test_start  # what the models read
    training = {"epochs": 0, "best_epoch": 0, "train_windows": len(split.train[0])}
    origin = panel.dates[split.test_start].date()
    logger.info("Backtest origin %s", origin)
    if len(split.train[0]) and len(split.valid[0]):
        _, data = fit_and_scale(history, fit_end=split.fit_end, driver_effect=settings.data.driver_effect)
        trainer = make_trainer(
            copy.deepcopy(pretrained),
            data,
            train=split.train,
            train_end=split.valid_start,
            valid=split.valid,
            horizon=horizon,
            out_dir=out_dir,
            settings=settings.train,
        )
        training |= fine_tune(trainer, checkpoint=resume_checkpoint(out_dir, *resume))
    else:
        logger.warning("No training or validation windows before this origin: fine-tuned = pretrained here")
    model, _, known = refit(
        history,
        pretrained=pretrained,
        epochs=training["best_epoch"],
        settings=settings,
        out_dir=out_dir / "refit",
        resume=resume,
    )
    models = {"fine_tuned": model, "zero_shot": zero_shot}
    if settings.train.gbm_trees:
        models["gbm"] = fit_gbm(
            history, trees=settings.train.gbm_trees, seed=settings.train.seed, max_rows=settings.train.gbm_max_rows
        )
    series = split.test[0]
    forecasts = method_forecasts(models, known, split.test, horizon=horizon)
    return OriginResult(
        str(origin),
        panel.keys.iloc[series].reset_index(drop=True),
        panel.values[series[:, None], split.test_start + np.arange(horizon)],  # the actuals (no gap there: split)
        forecasts,
        interval_scales(history, split.test_start, known.scaling, windows=split.test, horizon=horizon),
        mase_scale(history.values, history.start, split.test_start)[series],
        training,
    )


def refit(
    panel: Panel,
    *,
    pretrained: torch.nn.Module,
    epochs: int,
    settings: Settings,
    out_dir: Path,
    resume: tuple[str, bool],
) -> tuple[torch.nn.Module, tuple, ScaledPanel]:
    """The model that forecasts after the panel's last week: scaled and trained on every week for the epochs the
    backtest chose. Returns the model (the pretrained one with epochs 0), the fitted scalers (granite's
    preprocessor, driver scaling) and the scaled panel."""
    scalers, data = fit_and_scale(
        panel, fit_end=np.full(len(panel.keys), len(panel.dates)), driver_effect=settings.data.driver_effect
    )
    model = copy.deepcopy(pretrained)
    windows = refit_windows(
        panel, min_context=settings.backtest.min_context_weeks, stride=settings.backtest.train_stride
    )
    if epochs and len(windows[0]):
        logger.info(
            "Refit on the %d weeks up to %s: %d windows, %d epochs",
            len(panel.dates),
            panel.dates[-1].date(),
            len(windows[0]),
            epochs,
        )
        trainer = make_trainer(
            model,
            data,
            train=windows,
            train_end=len(panel.dates),
            valid=None,
            horizon=settings.model.prediction_length,
            out_dir=out_dir,
            settings=settings.train,
            epochs=epochs,
        )
        trainer.train(resume_from_checkpoint=resume_checkpoint(out_dir, *resume))
        model = trainer.model
    return model, scalers, data


def write_outputs(
    forecast: pd.DataFrame,
    choice: Choice,
    panel: Panel,
    models: dict[str, torch.nn.Module],
    scalers: tuple,
    totals: dict,
    *,
    settings: Settings,
    saved: dict,
    metrics: dict,
    clock: PhaseClock,
    warnings: list[str],
) -> None:
    """Section 8: previsoes.csv, previsoes_totais.csv, plots, final_ttm_model/ (with the totals' intervals; saved:
    its settings.json), the metrics and the report page, under RESULTS_DIR."""
    output, data = settings.output, settings.data
    results = Path(output.results_dir)
    write_forecasts(forecast, results / "previsoes.csv", date_column=data.date_column)
    sums = level_sums(forecast, id_columns=data.id_columns, targets=data.target_columns, date_column=data.date_column)
    totals_rows = write_totals(sums, totals, data=data, results=results, level=output.interval_level)
    plot_results(
        panel,
        forecast,
        choice.last_origin,
        choice.figures["metrics"],
        results / "plots",
        top_n=output.plot_top_series,
        level=output.interval_level,
    )
    clock.lap("plots")
    save_artifacts(models, scalers, choice.conformal, totals, saved, Path(output.final_model_dir))
    clock.lap("save")
    write_metrics(metrics, choice.per_series, results)
    facts = run_facts(data, n_series=len(panel.keys), weeks=panel.dates, forecast=forecast)
    write_report(
        results / REPORT,
        facts=facts,
        changed={k: v for k, v in settings.as_config().items() if v != config.defaults().get(k)},
        warnings=warnings,
        totals=totals_rows,
        date_column=data.date_column,
        plots_dir=results / "plots",
        metrics=metrics,
    )


def run_facts(data: DataSettings, *, n_series: int, weeks: pd.DatetimeIndex, forecast: pd.DataFrame) -> dict:
    """What the report page says ran: the file, the series, the weeks read and forecast (forecast: rows of the
    forecast weeks, previsoes.csv's or their totals)."""
    ahead = forecast[data.date_column]
    return {
        "arquivo": data.data_path,
        "séries (produto × UF)": n_series,
        "semanas lidas": f"{len(weeks)} ({weeks[0].date()} a {weeks[-1].date()})",
        "semanas previstas": f"{ahead.nunique()} ({ahead.min().date()} a {ahead.max().date()})",
        "metas": ", ".join(data.target_columns),
        "direcionadores": ", ".join(data.control_columns) or "nenhum",
    }


def write_totals(sums: pd.DataFrame, totals: dict, *, data: DataSettings, results: Path, level: float) -> pd.DataFrame:
    """previsoes_totais.csv and its plots: each id column's totals and the overall total, from the level_sums of
    previsoes.csv's rows."""
    frame = totals_frame(
        sums, totals, id_columns=data.id_columns, targets=data.target_columns, date_column=data.date_column
    )
    write_forecasts(frame, results / "previsoes_totais.csv", date_column=data.date_column)
    plot_totals(frame, results / "plots", targets=data.target_columns, date_column=data.date_column, level=level)
    return frame


def run_predict(settings: Settings, *, warnings: list[str]) -> dict:
    """Forecast new data with FINAL_MODEL_DIR, without training; drivers of the coming weeks from FUTURE_PATH. A CSV
    of more than PREDICT_PART_ROWS rows is read, forecast and written one part of its series at a time; then the
    totals and a short report page (warnings: the run's logged warnings, as they happen)."""
    output, clock = settings.output, PhaseClock()
    results = Path(output.results_dir)
    check_output_dirs([results], 1)
    saved = load_artifacts(Path(output.final_model_dir), method=output.forecast_method)
    device = compute_device(settings.train.use_cpu)
    models = {name: model if name == "gbm" else model.to(device) for name, model in saved.models.items()}
    clock.lap("load model")
    new_files = {"DATA_PATH": settings.data.data_path, "FUTURE_PATH": settings.data.future_path}
    data = DataSettings.of(saved.settings | new_files)  # the columns and drivers the model was trained with
    horizon = ModelSettings.of(saved.settings).prediction_length
    inputs = predict_inputs(data, horizon=horizon, part_rows=output.predict_part_rows, work_dir=results)
    n_series, new, examples, sums = 0, 0, [], []
    with contextlib.closing(inputs), ForecastCsv(results / "previsoes.csv", date_column=data.date_column) as out:
        for sales, future, span, source in inputs:
            clock.lap("read")
            panel, _ = weekly_panel(sales, future, data=data, horizon=horizon, source=source, span=span)
            weeks = panel.dates  # every part has the whole file's calendar
            scaled = scale_panel(panel, saved.scalers, saved.drivers)
            n_series, new = n_series + len(panel.keys), new + (~scaled.scaling.known).sum()
            examples += panel.keys[~scaled.scaling.known].head(10 - len(examples)).to_dict("records")
            clock.lap("preprocess")
            point = forecast_future(
                models,
                scaled,
                saved.conformal,
                saved.settings["SELECTION"],
                horizon=horizon,
                date_column=data.date_column,
                scale_kind=saved.settings.get("INTERVAL_SCALE", SCALES[0]),  # folders of earlier versions: "series"
            )
            clock.lap("forecast")
            out.write(point)
            columns = {"id_columns": data.id_columns, "targets": data.target_columns, "date_column": data.date_column}
            sums.append(level_sums(point, **columns))
            clock.lap("write")
    totals = write_totals(add_sums(sums), saved.totals, data=data, results=results, level=output.interval_level)
    write_report(
        results / REPORT,
        facts=run_facts(data, n_series=n_series, weeks=weeks, forecast=totals) | {"modelo": output.final_model_dir},
        changed={"SELECTION": saved.settings["SELECTION"]},
        warnings=warnings,
        totals=totals,
        date_column=data.date_column,
        plots_dir=results / "plots",
    )
    clock.lap("totals")
    if new:
        logger.warning(
            "%d series were not in training; scaled on their own history and flagged new_series: %s", new, examples
        )
    logger.info("Done in %s; report page: %s", clock, results / REPORT)
    return {"n_series": n_series, "n_new_series": int(new), "phase_seconds": clock.seconds}


def _one_line(err: BaseException, batch_size: int) -> str:
    """The error as the user should read it: what failed and what to change."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return (
            f"CUDA out of memory with BATCH_SIZE={batch_size} (evaluation batches are 4x that); "
            f"try --BATCH_SIZE={max(1, batch_size // 2)}"
        )
    return str(err)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the pipeline; return its metrics. Settings and input errors end the process with one line (exit 2; the
    traceback with --DEBUG=True); --help lists the settings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)  # ours, over granite-tsfm's import-time one
    if {"-h", "--help"} & set(argv):
        sys.stdout.write(config.help_text() + "\n")
        raise SystemExit(0)
    try:
        cfg = config.resolve(argv, os.environ)
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s (python ttm_model.py --help lists every setting)", err)
        raise SystemExit(2) from None
    logging.getLogger().setLevel(cfg.LOG_LEVEL if is_main_process() else "WARNING")  # one log under torchrun
    logger.info("Settings: %s", json.dumps(vars(cfg), default=str))
    set_seed(cfg.SEED)
    settings = Settings.of(vars(cfg))
    try:
        with collected_warnings() as warnings:
            if cfg.MODE == "predict":
                return run_predict(settings, warnings=warnings)
            init_distributed(cfg.USE_CPU)
            synthetic = cfg.DATA_PATH == config.DATA_PATH  # only the default path may be absent
            return run_train(settings, fresh_start=cfg.FRESH_START, synthetic_if_missing=synthetic, warnings=warnings)
    except (InputError, FileNotFoundError, torch.cuda.OutOfMemoryError) as err:
        if cfg.DEBUG:
            raise
        logger.error("%s", _one_line(err, cfg.BATCH_SIZE))
        raise SystemExit(2) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
