"""The app (Clara's MMAR) folder and its three config files.

An app is what admins upload and deploy: ``config/`` with
``config_fed_server.json`` (rounds), ``config_fed_client.json`` (local
training and cross-site validation) and ``config_train.json`` (model, data,
optimizer; or the MONAI bundle in ``resources/`` that holds them), plus
optional custom Python code in ``resources/``. The server
checks all of it at upload time so that a typo fails in the admin's console
with a clear message, not in a training process at a hospital an hour later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import urlsplit

from flcore.compression import WireCompression
from flcore.configfile import parse_json, read_bounded
from flcore.metrics import metric_name_problem
from flcore.schema import ConfigError, Field, at_least, in_range, non_empty, one_of, parse_mapping

CONFIG_DIR = "config"
RESOURCES_DIR = "resources"
APP_TOP_LEVEL = (CONFIG_DIR, RESOURCES_DIR)
SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"
TRAIN_CONFIG = "config_train.json"


@dataclass(frozen=True)
class MlflowSettings:
    """Where the server logs a run for MLflow (config_fed_server.json, ``mlflow``)."""

    tracking_uri: str
    experiment: str = ""
    """'' means the app's name."""


@dataclass(frozen=True)
class ServerAppConfig:
    """How the server runs rounds (config_fed_server.json)."""

    start_round: int = 0
    num_rounds: int = 10
    min_num_clients: int = 1
    max_num_clients: int = 100
    wait_after_min_clients: float = 10.0
    validation_metric: str = "val_accuracy"
    metric_mode: str = "max"
    initial_checkpoint: str | None = None
    final_validation_timeout: float = 120.0
    aggregator: str = "fedavg"
    trim_fraction: float = 0.1
    clip_update_norm: float | None = None
    keep_round_models: int = 1
    mlflow: MlflowSettings | None = None
    wire_compression: WireCompression = WireCompression.NONE


@dataclass(frozen=True)
class ClientAppConfig:
    """How each site trains and validates (config_fed_client.json)."""

    local_epochs: int = 1
    cross_validate: bool = False
    cross_validation_timeout: float = 300.0


@dataclass(frozen=True)
class ComponentSpec:
    """A class or function named by dotted path, with its keyword arguments."""

    path: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """What to train and on which data (config_train.json)."""

    model: ComponentSpec
    dataset: ComponentSpec
    optimizer: ComponentSpec
    loss: ComponentSpec
    trainer: ComponentSpec | None
    batch_size: int
    seed: int
    num_workers: int = 0


@dataclass(frozen=True)
class BundleConfig:
    """A MONAI bundle in ``resources/`` that the app trains (config_train.json's ``bundle``).

    The bundle's own configs name the network, data, optimizer and loss, so
    an app names only where the bundle is and which of its configs to run.
    """

    folder: str
    train_config: str = "configs/train.json"
    evaluate_config: str = "configs/evaluate.json"
    network: str = "network_def"
    seed: int = 0


MAX_LOADER_WORKERS = 64
"""The most data loader processes an app may ask a site for (each of its two loaders)."""
AGGREGATORS = ("fedavg", "median", "trimmed_mean")
ROBUST_AGGREGATORS = ("median", "trimmed_mean")
"""The rules that count one vote per site, whatever its samples."""


def below_half(value: Any) -> str | None:
    """A trimmed mean drops this fraction at each end: something must be left in the middle."""
    return None if 0 <= value < 0.5 else "must be at least 0 and below 0.5"


def trimmed_per_end(fraction: float, updates: int) -> int:
    """How many of ``updates`` values a trimmed mean drops at each end of a coordinate: the
    one rule that the config check, the aggregator and the server's warning share."""
    return int(fraction * updates)


def seed_problem(value: int) -> str | None:
    """torch takes a seed of 64 bits: a larger one passed the upload and failed the run's
    start with an overflow."""
    return None if 0 <= value < 2**63 else "must be a whole number from 0 to 2**63 - 1"


def positive(value: Any) -> str | None:
    """A bound that must be above zero."""
    return None if value > 0 else "must be above 0"


SERVER_FIELDS = [
    Field("start_round", int, default=0, check=at_least(0)),
    Field("num_rounds", int, default=10, check=at_least(1)),
    Field("min_num_clients", int, default=1, check=at_least(1)),
    Field("max_num_clients", int, default=100, check=at_least(1)),
    Field("wait_after_min_clients", float, default=10.0, check=at_least(0)),
    Field("validation_metric", str, default="val_accuracy", check=metric_name_problem),
    Field("metric_mode", str, default="max", check=one_of("max", "min")),
    Field("initial_checkpoint", (str, type(None)), default=None),
    Field("final_validation_timeout", float, default=120.0, check=at_least(1)),
    Field("aggregator", str, default="fedavg", check=one_of(*AGGREGATORS)),
    Field("trim_fraction", float, default=0.1, check=below_half),
    Field("clip_update_norm", (float, type(None)), default=None, check=positive),
    Field("keep_round_models", int, default=1, check=at_least(1)),
    Field("mlflow", (dict, type(None)), default=None),
    Field("wire_compression", str, default="none", check=one_of(*WireCompression)),
]
MAX_URI = 2048
MLFLOW_SCHEMES = ("", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql")
REMOTE_SCHEMES = ("http", "https")
"""A tracking server's URI: a query string there is a token's place (a database URI's query
holds its options, ``?sslmode=require``)."""
"""A path (the file store), MLflow's REST server, or a database it tracks in directly."""


def _printable_text(limit: int) -> Any:
    def check(value: Any) -> str | None:
        if len(value) > limit:
            return f"must be at most {limit} characters"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            return "must not hold control characters"
        return None

    return check


def tracking_uri_problem(uri: str) -> str | None:
    """Why a tracking URI cannot be used (None: it can).

    The app is deployed to every site, so a password in it would reach
    them all: credentials belong in the server's environment
    (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter is a path
        scheme = ""
    if scheme not in MLFLOW_SCHEMES:
        return f"has the scheme {scheme!r}; use one of {', '.join(s for s in MLFLOW_SCHEMES if s)}"
    if parts.username or parts.password or (scheme in REMOTE_SCHEMES and parts.query):
        # A tracking server's query string carries tokens as well (?token=…).
        return (
            "must not carry a user name, password or query string (the app reaches every "
            "site): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
            "MLFLOW_TRACKING_TOKEN, in the server's environment"
        )
    return None


MLFLOW_FIELDS = [
    Field("tracking_uri", str, required=True, check=_printable_text(MAX_URI)),
    Field("experiment", str, default="", check=_printable_text(250)),
]

CLIENT_FIELDS = [
    Field("local_epochs", int, default=1, check=at_least(1)),
    Field("cross_validate", bool, default=False),
    Field("cross_validation_timeout", float, default=300.0, check=at_least(1)),
]

COMPONENT_FIELDS = [
    Field("path", str, required=True, check=non_empty),
    Field("args", dict, default=None),
]

TRAIN_FIELDS = [
    Field("model", dict, required=True),
    Field("dataset", dict, required=True),
    Field("optimizer", dict, default={"path": "torch.optim.SGD", "args": {"lr": 0.01}}),
    Field("loss", dict, default={"path": "torch.nn.CrossEntropyLoss"}),
    Field("trainer", (dict, type(None)), default=None),
    Field("batch_size", int, default=32, check=at_least(1)),
    Field("seed", int, default=0, check=seed_problem),
    # Data loader processes at the site, started for an app that may need no approval.
    Field("num_workers", int, default=0, check=in_range(0, MAX_LOADER_WORKERS)),
]


def inside(value: Any) -> str | None:
    """Accept a relative path that stays inside its folder (no '..', nothing absolute)."""
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or ".." in path.parts:
        return "must be a relative path with '/' that stays inside its folder"
    return None


BUNDLE_FIELDS = [
    Field("folder", str, required=True, check=inside),
    Field("train_config", str, default="configs/train.json", check=inside),
    Field("evaluate_config", str, default="configs/evaluate.json", check=inside),
    Field("network", str, default="network_def", check=non_empty),
]

BUNDLE_TRAIN_FIELDS = [
    Field("bundle", dict, required=True),
    Field("seed", int, default=0, check=seed_problem),
]


def read_json(path: Path) -> Any:
    """Read a JSON config file within flcore.configfile's bounds; every failure a ConfigError."""
    where = f"{path.parent.name}/{path.name}"
    try:
        return parse_json(read_bounded(path, where=where), where)
    except FileNotFoundError:
        raise ConfigError(f"{where}: missing") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None


def parse_server_config(
    data: object, where: str = f"{CONFIG_DIR}/{SERVER_CONFIG}"
) -> ServerAppConfig:
    """Check a config_fed_server.json mapping."""
    values = parse_mapping(data, SERVER_FIELDS, where)
    if values["clip_update_norm"] is not None:
        values["clip_update_norm"] = float(values["clip_update_norm"])
    if values["mlflow"] is not None:
        values["mlflow"] = _mlflow(values["mlflow"], f"{where}: mlflow")
    values["wire_compression"] = WireCompression(values["wire_compression"])
    config = ServerAppConfig(**values)
    _check_aggregation(config, "trim_fraction" in cast(Mapping[str, Any], data), where)
    if config.start_round >= config.num_rounds:
        raise ConfigError(
            f"{where}: 'start_round' ({config.start_round}) must be smaller than "
            f"'num_rounds' ({config.num_rounds})"
        )
    if config.min_num_clients > config.max_num_clients:
        raise ConfigError(
            f"{where}: 'min_num_clients' ({config.min_num_clients}) must not exceed "
            f"'max_num_clients' ({config.max_num_clients})"
        )
    return config


def _mlflow(data: object, where: str) -> MlflowSettings:
    settings = MlflowSettings(**parse_mapping(data, MLFLOW_FIELDS, where))
    if not settings.tracking_uri.strip():
        raise ConfigError(f"{where}: 'tracking_uri' must not be empty")
    problem = tracking_uri_problem(settings.tracking_uri)
    if problem:
        raise ConfigError(f"{where}: 'tracking_uri' {problem}")
    return settings


def _check_aggregation(config: ServerAppConfig, trim_given: bool, where: str) -> None:
    """Refuse aggregation settings that could never do what they say."""
    if config.aggregator != "trimmed_mean":
        if trim_given:
            raise ConfigError(
                f"{where}: 'trim_fraction' applies to the aggregator 'trimmed_mean' only "
                f"(the aggregator is {config.aggregator!r}); remove it or set "
                "'aggregator': 'trimmed_mean'"
            )
        return
    if trimmed_per_end(config.trim_fraction, config.max_num_clients) == 0:
        raise ConfigError(
            f"{where}: 'trim_fraction' {config.trim_fraction:g} trims nothing even with "
            f"'max_num_clients' ({config.max_num_clients}) updates; it must be at least "
            f"{1 / config.max_num_clients:.3g}"
        )


def parse_client_config(
    data: object, where: str = f"{CONFIG_DIR}/{CLIENT_CONFIG}"
) -> ClientAppConfig:
    """Check a config_fed_client.json mapping."""
    return ClientAppConfig(**parse_mapping(data, CLIENT_FIELDS, where))


def _component(data: object, where: str) -> ComponentSpec:
    values = parse_mapping(data, COMPONENT_FIELDS, where)
    return ComponentSpec(path=values["path"], args=dict(values["args"] or {}))


def parse_train_config(
    data: object, where: str = f"{CONFIG_DIR}/{TRAIN_CONFIG}"
) -> TrainConfig | BundleConfig:
    """Check a config_train.json mapping: components, or a MONAI bundle (with ``bundle``)."""
    if isinstance(data, dict) and "bundle" in data:
        values = parse_mapping(data, BUNDLE_TRAIN_FIELDS, where)
        bundle = parse_mapping(values["bundle"], BUNDLE_FIELDS, f"{where}: bundle")
        return BundleConfig(**bundle, seed=values["seed"])
    values = parse_mapping(data, TRAIN_FIELDS, where)
    trainer = values["trainer"]
    return TrainConfig(
        model=_component(values["model"], f"{where}: model"),
        dataset=_component(values["dataset"], f"{where}: dataset"),
        optimizer=_component(values["optimizer"], f"{where}: optimizer"),
        loss=_component(values["loss"], f"{where}: loss"),
        trainer=None if trainer is None else _component(trainer, f"{where}: trainer"),
        batch_size=values["batch_size"],
        seed=values["seed"],
        num_workers=values["num_workers"],
    )


@dataclass(frozen=True)
class App:
    """A checked app folder."""

    root: Path
    train: TrainConfig | BundleConfig
    server: ServerAppConfig | None
    client: ClientAppConfig | None

    @property
    def resources(self) -> Path:
        """Folder of custom code, put first on sys.path of the processes that run it."""
        return self.root / RESOURCES_DIR

    @property
    def bundle(self) -> BundleConfig | None:
        """The MONAI bundle the app trains, or None for an app of components."""
        return self.train if isinstance(self.train, BundleConfig) else None


def load_app(root: Path) -> App:
    """Read and check every config file of an app folder."""
    config = root / CONFIG_DIR
    if not config.is_dir():
        raise ConfigError(f"{root.name}: no config/ folder; an app holds config/ and resources/")
    server_path, client_path = config / SERVER_CONFIG, config / CLIENT_CONFIG
    if not server_path.exists() and not client_path.exists():
        raise ConfigError(f"{root.name}: config/ needs {SERVER_CONFIG}, {CLIENT_CONFIG} or both")
    app = App(
        root=root,
        train=parse_train_config(read_json(config / TRAIN_CONFIG)),
        server=parse_server_config(read_json(server_path)) if server_path.exists() else None,
        client=parse_client_config(read_json(client_path)) if client_path.exists() else None,
    )
    if app.bundle is not None:
        _check_bundle(app.resources, app.bundle)
    return app


def _check_bundle(resources: Path, bundle: BundleConfig) -> None:
    """Refuse a bundle whose configs are not where config_train.json says."""
    folder = resources / bundle.folder
    for name in (bundle.train_config, bundle.evaluate_config):
        if not (folder / name).is_file():
            raise ConfigError(
                f"{CONFIG_DIR}/{TRAIN_CONFIG}: bundle: {RESOURCES_DIR}/{bundle.folder}/{name} "
                "is missing (a bundle holds configs/train.json and configs/evaluate.json)"
            )
