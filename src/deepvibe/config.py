"""Typed, frozen configuration read from YAML.

Each section is a frozen pydantic model with ``extra="forbid"``: an unknown key, a wrong type
or an out-of-range value fails with its dotted path (``train.kl.cycles: ...``), never a silent
``None``. ``--set section.key=value`` overrides are parsed as YAML scalars and applied before
validation, so they are checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deepvibe.errors import ConfigError

DEFAULT_FEATURES: tuple[str, ...] = (
    "danceability",
    "energy",
    "key",
    "loudness",
    "mode",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "duration_ms",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the input tables are and how to read them."""

    interactions: str = "data/full_training_matrix.csv"
    format: Literal["auto", "wide", "long"] = "auto"
    user_column: str = "user_id"
    time_column: str | None = "week"
    track_column: str = "track_id"
    plays_column: str | None = "plays"
    features: str | None = "data/top_10k_features.csv"
    feature_track_column: str = "track_id"
    feature_columns: tuple[str, ...] = DEFAULT_FEATURES
    popularity_column: str | None = "popularity"
    name_column: str | None = "track_name"
    artist_column: str | None = "artists"
    database: str | None = "data/global_tracks.csv"
    max_tracks: int = Field(10_000, gt=0)
    min_track_users: int = Field(1, ge=1)
    min_user_tracks: int = Field(1, ge=1)

    @field_validator("feature_columns")
    @classmethod
    def _distinct_features(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"feature column(s) listed twice: {', '.join(dupes)}")
        return v


class ModelConfig(_Section):
    """Architecture of the hybrid VAE (stored in every checkpoint)."""

    hidden: tuple[int, ...] = (1024, 512)
    latent: int = Field(256, gt=0)
    activation: Literal["selu", "tanh"] = "selu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w <= 0 for w in v):
            raise ValueError("every hidden width must be a positive integer")
        return v


class KLConfig(_Section):
    """Cyclical KL annealing (Fu et al. 2019)."""

    beta_max: float = Field(1.0, ge=0.0)
    cycles: int = Field(4, gt=0)
    ratio: float = Field(0.5, gt=0.0, le=1.0)


class TrainConfig(_Section):
    # 100 epochs and positive_weight 10 (the design had 50 and 40) won the Last.fm-2k ablation
    # in docs/BENCHMARKS.md: they bring validation-selected NDCG@100 from below Mult-VAE to EASE.
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0.0)
    likelihood: Literal["weighted_mse", "multinomial"] = "weighted_mse"
    positive_weight: float = Field(10.0, gt=0.0)
    audio_weight: float = Field(1.0, ge=0.0)
    input_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    kl: KLConfig = KLConfig()
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    eval_every: int = Field(1, gt=0)
    snapshot_every: int = Field(10, gt=0)
    max_grad_norm: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: bf16 where the device multiplies bf16 natively, else fp32 (docs/BENCHMARKS.md)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # several processes (torchrun): how long a rank waits for the others before it stops with an
    # error naming the one that died; must exceed rank 0's validation and checkpoint writes
    dist_timeout_s: float = Field(300.0, gt=0.0)

    tensorboard: bool = False  # also write the epoch scalars to logs_dir/tensorboard


class WeightsConfig(_Section):
    """Weights of the hybrid discovery score's parts; a part left out keeps the weight fitted
    at the end of training (stored in the checkpoint) or, without one, the measured default."""

    dna: float | None = Field(None, ge=0.0)
    artist: float | None = Field(None, ge=0.0)
    collab: float | None = Field(None, ge=0.0)
    decoder: float | None = Field(None, ge=0.0)

    def given(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


class DiscoverConfig(_Section):
    temperature: float = Field(0.1, gt=0.0)
    top_k: int | None = Field(30, gt=0)  # default measured: docs/BENCHMARKS.md, Discovery scan
    similarity: Literal["pearson", "cosine"] = "cosine"
    gems_lambda: float = Field(0.2, ge=0.0)
    popularity_ceiling: float | None = Field(None, ge=0.0, le=100.0)
    top_n: int = Field(1000, gt=0)
    source: Literal["auto", "db", "catalogue", "dna"] = "auto"
    weights: WeightsConfig = WeightsConfig()
    # The hybrid's Vibe DNA = (1 - a) * the decoder's temperature-weighted DNA + a * the mean
    # standardised features of the user's own history (a = dna_anchor). 0.5: chosen on
    # spotify-2024 validation users (docs/BENCHMARKS.md, "Vibe DNA anchor").
    dna_anchor: float = Field(0.5, ge=0.0, le=1.0)
    # The anchor of --new-artists mode (the same mix); 1.0 chosen on spotify-2024 validation
    # users (docs/BENCHMARKS.md, "New-artist mode").
    dna_anchor_new_artists: float = Field(1.0, ge=0.0, le=1.0)
    # Anchors tried per mode on the validation users at the best epoch, each with its fitted
    # weights; the best replaces the mode's configured anchor only by a real gain (fit_z).
    # Empty: always the configured anchors.
    anchor_choices: tuple[float, ...] = (0.0, 0.5, 1.0)
    # A fit (weights or anchor) replaces its prior only when its mean per-user NDCG@100 gain on
    # the validation users is >= fit_z standard errors of that gain (and >= 0.005).
    fit_z: float = Field(1.0, ge=0.0)
    chunk_size: int = Field(262_144, gt=0)
    user_block: int = Field(1024, gt=0)

    @field_validator("anchor_choices")
    @classmethod
    def _anchors_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError("every anchor must be between 0 and 1")
        return v


class PathsConfig(_Section):
    models_dir: str = "models"
    logs_dir: str = "logs"
    recommendations_dir: str = "recommendations"
    best_checkpoint: str = "hybrid_deepvibe_best.pth"


class Config(_Section):
    seed: int = 42
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    discover: DiscoverConfig = DiscoverConfig()
    paths: PathsConfig = PathsConfig()

    @property
    def best_checkpoint_path(self) -> Path:
        return Path(self.paths.models_dir) / self.paths.best_checkpoint

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.paths.models_dir) / "snapshots"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (tuples become lists)."""
        return _plain(self.model_dump())


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _describe(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling against configs/default.yaml"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    if msg.startswith("value error, "):
        msg = msg[len("value error, ") :]
    return f"{path}: {msg}, got {got!r}"


_SECTIONS = ("data", "model", "train", "discover", "paths")


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`, raising ConfigError with dotted paths."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    # A section left empty (``train:`` with every key commented out) means "all defaults".
    raw = {k: v for k, v in raw.items() if not (v is None and k in _SECTIONS)}
    if isinstance(raw.get("train"), dict) and "kl" in raw["train"] and raw["train"]["kl"] is None:
        raw = {**raw, "train": {k: v for k, v in raw["train"].items() if k != "kl"}}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_describe(first)}{extra}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = _plain(raw) if raw else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, value_text = item.split("=", 1)
        dotted = dotted.strip()
        if not dotted or any(not part for part in dotted.split(".")):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        node = out
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found; pass --config with an existing YAML file")
    if p.is_dir():
        raise ConfigError(f"{p}: config path is a directory, expected a YAML file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text_line_of(p, exc.start)
        raise ConfigError(
            f"{p}: config is not UTF-8 text (line {line}); re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{p}: cannot read config ({exc.strerror or exc}); check its permissions"
        ) from None
    if not text.strip():
        raise ConfigError(
            f"{p}: config file is empty; fill it in (see configs/default.yaml) or leave out "
            "--config to use the defaults"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of sections (seed, data, model, train, ...)")
    return raw


def text_line_of(path: Path, byte_offset: int) -> int:
    """1-based line number of a byte offset in a file (for encoding errors)."""
    try:
        return path.read_bytes()[:byte_offset].count(b"\n") + 1
    except OSError:
        return 1


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the built-in defaults when ``path`` is None) plus overrides."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        source = f"{source} + --set"
    return config_from_dict(apply_overrides(raw, overrides), source=source)
