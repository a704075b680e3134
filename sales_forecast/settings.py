"""Typed settings per concern, built from config in training and from the saved settings.json in predict.

Each dataclass holds one group of config.py's settings under the same names in lower case (DATE_COLUMN ->
date_column), as HF's ModelArguments / TrainingArguments do for a script: both modes read columns, drivers and
shapes through the same objects. config.py stays the one place where settings are written and checked.
"""

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Self


class _Section:
    """A dataclass of config keys in lower case."""

    @classmethod
    def of(cls, settings: Mapping) -> Self:
        """From config's settings (vars of the resolved namespace) or a saved settings.json (lists become tuples);
        a key that a model folder of an earlier version lacks takes the field's default."""
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name.upper()
            if key in settings:
                raw = settings[key]
                values[field.name] = tuple(raw) if isinstance(raw, list) else raw
        return cls(**values)


@dataclass(frozen=True)
class DataSettings(_Section):
    """Sections 1-2: the data, its columns and drivers (predict: the saved model's columns, the new files)."""

    data_path: str
    future_path: str
    date_column: str
    id_columns: tuple
    target_columns: tuple
    control_columns: tuple = ()
    holiday_country: str = ""  # model folders of earlier versions had no holiday flags
    categorical_columns: tuple = ()
    week_anchor: str = "auto"
    gap_weeks: int = 0  # model folders of earlier versions read every week without rows as 0
    driver_effect: bool = False  # model folders of earlier versions divided nothing out (drivers.pkl says it too)

    @property
    def columns(self) -> dict:
        """The column settings as read_sales_csv takes them."""
        return {
            "date_column": self.date_column,
            "id_columns": self.id_columns,
            "target_columns": self.target_columns,
            "control_columns": self.control_columns,
        }


@dataclass(frozen=True)
class BacktestSettings(_Section):
    """Section 3: the rolling origins and how training windows are cut."""

    backtest_origins: int
    backtest_step: int  # 0: the horizon
    min_context_weeks: int
    train_stride: int


@dataclass(frozen=True)
class ModelSettings(_Section):
    """Section 4: the pretrained TTM and its shape."""

    pretrained_model: str
    context_length: int
    prediction_length: int
    prefer_l1_loss: bool
    trainable_layers: tuple


@dataclass(frozen=True)
class TrainSettings(_Section):
    """Section 5 with the seed, the device and the window caps: what each training of the run is given."""

    learning_rate: float
    weight_decay: float
    num_train_epochs: int
    batch_size: int
    early_stopping_patience: int
    seed: int
    num_workers: int
    use_cpu: bool
    max_train_windows: int  # windows per epoch, drawn at random from all training windows (0: all of them)
    max_valid_windows: int  # validation windows scored each epoch, a fixed sample (0: all of them)
    gather_on_gpu: bool = True
    fresh_start: bool = False
    gbm_trees: int = 0  # a model folder of an earlier version had no gbm
    gbm_max_rows: int = 0  # series-weeks the gbm learns from (0: all)


@dataclass(frozen=True)
class OutputSettings(_Section):
    """Section 6: the forecast method, intervals, plots and where outputs go."""

    forecast_method: str
    interval_level: float
    plot_top_series: int
    results_dir: str
    final_model_dir: str
    min_free_disk_mb: int
    predict_part_rows: int


@dataclass(frozen=True)
class Settings:
    """Every group, built at once."""

    data: DataSettings
    backtest: BacktestSettings
    model: ModelSettings
    train: TrainSettings
    output: OutputSettings

    @classmethod
    def of(cls, settings: Mapping) -> "Settings":
        return cls(*(field.type.of(settings) for field in dataclasses.fields(cls)))

    def as_config(self) -> dict:
        """Every setting under config.py's name, as settings.json records them."""
        groups = (dataclasses.asdict(getattr(self, field.name)) for field in dataclasses.fields(self))
        return {key.upper(): value for group in groups for key, value in group.items()}
