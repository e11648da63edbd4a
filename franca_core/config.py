"""One typed, validated configuration for the whole pipeline.

``PipelineConfig`` is the single object that flows from the CLI / Prefect flow parameter down to every stage;
each stage receives only its section. Defaults in code are the paper's ViT-B/14 recipe (FRANCA_METHOD.md);
profile YAMLs in ``franca_core/configs/`` (``tiny``, ``vitb14``, ``vitl14``, ``vitg14``) override them, and
dotted ``key=value`` overrides (DINOv2's ``opts``) override the profile.

Example:
    >>> cfg = load_config("tiny", ["train.optim.total_steps=100"])
    >>> cfg.train.optim.total_steps
    100
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_DIR = Path(__file__).parent / "configs"
PROFILES = ("tiny", "vitb14", "vitl14", "vitg14")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------- data / dedup
class SyntheticSourceConfig(_Section):
    """The embedded default source: a generated LAION-style corpus served on 127.0.0.1."""

    n_images: int = Field(2000, gt=0)
    image_size: int = Field(96, ge=16)
    seed: int = 0
    # what the generated images show (data/synthetic.py): textured objects, flat shapes, or whole-image textures
    # (the learning check's classes); the served LAION-style corpus, franca train and the evaluate stage's generated
    # sets (when eval.datasets is empty) all use it.
    style: Literal["objects", "plain", "textures"] = "objects"
    exact_dup_rate: float = Field(0.03, ge=0, le=0.5)
    near_dup_rate: float = Field(0.03, ge=0, le=0.5)
    dead_url_rate: float = Field(0.02, ge=0, le=0.5)
    corrupt_rate: float = Field(0.01, ge=0, le=0.5)
    non_image_rate: float = Field(0.005, ge=0, le=0.5)
    filtered_rate: float = Field(0.02, ge=0, le=0.5)
    bomb_count: int = Field(2, ge=0)  # decompression bombs (a few KB declaring 144 Mpx)
    contaminate_from: str | None = None  # an image Parquet (../shared/data layout) whose copies are planted
    contaminate_count: int = Field(0, ge=0)


MetadataColumn = Literal["sample_id", "url", "caption", "width", "height", "similarity", "punsafe", "pwatermark",
                         "aesthetic", "language", "license", "nsfw"]


class SelectConfig(_Section):
    """LAION metadata filters and deterministic sampling."""

    min_width: int = Field(32, ge=1)
    min_height: int = Field(32, ge=1)
    min_similarity: float = 0.28
    max_punsafe: float = Field(0.5, ge=0, le=1)
    max_pwatermark: float = Field(0.8, ge=0, le=1)
    min_aspect: float = Field(0.33, gt=0)
    max_aspect: float = Field(3.0, gt=0)
    languages: list[str] | None = None
    target_count: int | None = Field(None, gt=0)
    seed: int = 0
    # LAION-400M / laion2B NSFW tags (UNLIKELY, UNSURE, NSFW) a row may carry; None: no NSFW-tag filter
    nsfw_tags: list[str] | None = ["UNLIKELY"]
    licenses: list[str] | None = None  # license values kept (LAION writes "?" for unknown); None: any
    drop_unscored: bool = True  # a null filter value (never scored) fails that filter; counted either way


class DownloadConfig(_Section):
    """img2dataset settings."""

    long_side: int = Field(512, ge=16)
    processes: int = Field(1, ge=1)
    threads: int = Field(16, ge=1)
    retries: int = Field(2, ge=0)
    timeout_s: float = Field(10.0, gt=0)
    shard_size: int = Field(1000, ge=1)
    encode_quality: int = Field(95, ge=1, le=100)
    max_image_pixels: int = Field(64_000_000, gt=0)  # larger declared sizes are decompression bombs
    # Fetch policy (tasks/download_guard.py): http(s) only, public addresses only unless a host ("name" or
    # "name:port") is allowed here; the corpus server of the generated source allows itself for its run.
    allow_hosts: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-\[\]:]+$")], ...] = ()
    max_bytes: int = Field(32 * 2**20, gt=0)  # a larger body is refused (too_large)
    deadline_s: float = Field(30.0, gt=0)  # the whole fetch of one URL: retries, redirects, a dripping body
    user_agent_token: str = "franca-pipeline"  # in the User-Agent; X-Robots-Tag "<token>: noai" applies to it
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")  # opt-outs
    # "local": shards in `processes` forked processes; "ray": each shard a Ray task (one CPU) on the nodes of the
    # cluster at RAY_ADDRESS (else a local Ray), writing into storage.root, which every node must reach
    distributor: Literal["local", "ray"] = "local"


class DataConfig(_Section):
    """Stages 1-2: where the URL list comes from, how it is filtered and downloaded."""

    # "synthetic", a LAION-style metadata Parquet or a folder / s3:// prefix of its parts, a ../shared/data Parquet
    # or an image folder
    source: str = "synthetic"
    # our metadata column -> the file's column, where auto-detection (franca_core/data/laion_schemas.py) is not enough
    columns: dict[MetadataColumn, str] = {}
    synthetic: SyntheticSourceConfig = SyntheticSourceConfig()
    select: SelectConfig = SelectConfig()
    download: DownloadConfig = DownloadConfig()


class DedupConfig(_Section):
    """Stage 3: exact + near-duplicate removal and decontamination against evaluation sets.

    Near duplicates: L2 distance of the low-frequency Lab signature (franca_core/dedup/hashing.py) within
    ``near_dup_max_distance`` among the ``ann_neighbours`` ANN neighbours, and perceptual hashes within
    ``near_dup_max_hamming`` bits (a structure check on top of the colour/layout signature).
    """

    phash_size: int = Field(8, ge=4)
    near_dup_max_hamming: int = Field(14, ge=0)
    ann_neighbours: int = Field(8, ge=1)
    eval_sets: list[str] = []  # Parquet files (../shared/data layout) or image folders to decontaminate against
    max_image_pixels: int = Field(64_000_000, gt=0)
    signature_size: int = Field(4, ge=2, le=16)  # DCT block per Lab channel: 3 * size**2 dims
    near_dup_max_distance: float = Field(0.09, gt=0)  # tuned: docs in franca_core/dedup/near_dup.py
    ann_nprobe: int = Field(8, ge=1)
    include_eval_datasets: bool = True  # also decontaminate against every path in eval.datasets
    workers: int = Field(1, ge=1)  # processes hashing shards in parallel


# ----------------------------------------------------------------------------------------------------- train
class ModelConfig(_Section):
    """Backbone (FRANCA_METHOD.md, Backbone)."""

    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, gt=0)
    num_heads: int = Field(12, gt=0)
    patch_size: int = Field(14, gt=0)
    img_size: int = Field(224, gt=0)
    num_registers: int = Field(0, ge=0)
    layerscale_init: float = 1e-5
    ffn: Literal["swiglu", "mlp"] = "swiglu"  # DINOv2 ViT-S/B/L use a GELU MLP (4D), Franca/ViT-g SwiGLU
    drop_path: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        return self


class HeadConfig(_Section):
    """One Matryoshka projection head (DINO on CLS or iBOT on patch tokens)."""

    hidden_dim: int = Field(2048, gt=0)
    bottleneck_dim: int = Field(384, gt=0)
    n_prototypes: int = Field(131072, gt=0)  # K at the full dimension; level i gets K * d_i / D


class HeadsConfig(_Section):
    """Matryoshka levels: d_i = D / 2**(n_levels-1-i), i.e. D/16 ... D for 5 levels."""

    n_levels: int = Field(5, ge=1, le=8)
    dino: HeadConfig = HeadConfig()
    ibot: HeadConfig = HeadConfig(bottleneck_dim=256)


class CropsConfig(_Section):
    """Multi-crop (FRANCA_METHOD.md, Multi-crop)."""

    global_size: int = Field(224, gt=0)
    local_size: int = Field(98, gt=0)
    n_local: int = Field(8, ge=0)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    color_jitter: bool = True
    blur: bool = True


class MaskingConfig(_Section):
    """CyclicMask."""

    ratio_min: float = Field(0.1, ge=0, lt=1)
    ratio_max: float = Field(0.65, gt=0, lt=1)
    masked_fraction: float = Field(0.5, ge=0, le=1)  # of the global crops in a batch
    roll: bool = True
    min_aspect: float = Field(0.3, gt=0, le=1)


class LossConfig(_Section):
    """DINO + iBOT + KoLeo."""

    student_temp: float = Field(0.1, gt=0)
    teacher_temp_start: float = Field(0.04, gt=0)
    teacher_temp_end: float = Field(0.07, gt=0)
    teacher_temp_warmup_steps: int = Field(37_500, ge=0)
    sinkhorn_iters: int = Field(3, ge=1)
    # How the teacher's logits become targets: Franca's Sinkhorn-Knopp, or DINO's EMA centering (the ablation's
    # alternative; franca_core/losses/centering.py) with this centre momentum.
    teacher_targets: Literal["sinkhorn", "centering"] = "sinkhorn"
    center_momentum: float = Field(0.9, ge=0, lt=1)
    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0)
    koleo_weight: float = Field(0.1, ge=0)


class OptimConfig(_Section):
    """AdamW and every schedule (FRANCA_METHOD.md, Optimisation)."""

    batch_size: int = Field(32, gt=0)  # per worker; lr scales with sqrt(global batch / 1024)
    total_steps: int = Field(625_000, ge=0)  # 0: no training (pretrain passes train.init_from through)
    warmup_steps: int = Field(100_000, ge=0)  # capped at total_steps by the schedule
    base_lr: float = Field(1e-3, gt=0)  # per 1024 images
    min_lr: float = Field(1e-6, ge=0)
    weight_decay_start: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.2, ge=0)
    momentum_start: float = Field(0.994, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = Field(3.0, gt=0)
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    freeze_last_layer_steps: int = Field(1250, ge=0)


class MonitorConfig(_Section):
    """Collapse monitors of a training run (``franca_core.train.monitors``): RankMe and view-retrieval k-NN of the
    teacher's CLS on a fixed batch, logged to the stage's MLflow run. Operational: they never change the weights."""

    every: int = Field(500, ge=0)  # steps between two measurements (also at the first and last step); 0: off
    batch: int = Field(64, ge=2)  # images of the fixed batch (two global crops each)


class TrainConfig(_Section):
    """Stage 4 (and the recipe reused by high-res adaptation)."""

    model: ModelConfig = ModelConfig()
    heads: HeadsConfig = HeadsConfig()
    crops: CropsConfig = CropsConfig()
    masking: MaskingConfig = MaskingConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    num_workers: int = Field(1, ge=1)  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    # Forward passes under autocast: "bf16" (bfloat16 matmuls; on a CPU with AVX512-BF16 the tiny step runs at
    # 1.3x the images/s of fp32, `franca bench step`), "fp32", or "auto": bf16 where the device has native
    # bfloat16 (AVX512-BF16/AMX CPUs, bf16-capable GPUs) and fp32 elsewhere (emulated bf16 on an AVX2-only CPU
    # ran the tiny step at 0.06x fp32). Weights, optimiser state, EMA, Sinkhorn-Knopp and losses stay float32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    loader_workers: int = Field(2, ge=0)  # DataLoader processes per rank
    checkpoint_every: int = Field(1000, gt=0)
    checkpoint_every_minutes: float | None = Field(None, gt=0)  # also checkpoint every M minutes of training
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    log_every: int = Field(50, gt=0)
    max_minutes: float | None = Field(None, gt=0)  # wall budget; stops early and checkpoints
    fail_once_at_step: int | None = None  # test-only: raise once inside the loop at this step
    # recompute the student's block activations in the backward pass (timm's set_grad_checkpointing): more compute,
    # far less activation memory (ViT-L/g on one GPU); same losses and gradients
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the student's and teacher's forward passes (operational: same losses)
    dist_timeout_s: int = Field(1800, gt=0)  # torch.distributed collectives (Ray TorchConfig): a stuck rank fails
    # weights to start from (local or s3:// file of any layout franca_core.models.io.load_model_spec reads:
    # this project's, DINOv2, Franca, DINOv3); part of the pretrain key by content; optim.total_steps=0 passes it on
    init_from: str | None = None
    monitor: MonitorConfig = MonitorConfig()


class RasaConfig(_Section):
    """Stage 5: RASA fitting (FRANCA_METHOD.md, RASA)."""

    rounds: int = Field(9, ge=1)
    epochs: int = Field(5, ge=1)
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(64, gt=0)  # images per regressor step (all their patch tokens)
    max_images: int = Field(2000, gt=0)
    min_steps: int = Field(300, ge=0)  # each regressor trains at least this many steps (small fitting sets)
    views: int = Field(2, ge=1)  # augmented copies per image (identity + random flips / 90-degree turns)
    holdout: float = Field(0.2, gt=0, lt=1)  # fraction of images held out to measure the position MSE
    dataset: str | None = None  # Parquet or ImageFolder to fit on; None: the caller's choice
    resolution: int | None = Field(None, gt=0)  # short side in px; None: the set's own size
    # how rounds compose: each plane against all earlier ones (an exact projector) or Franca's per-round product
    composition: Literal["orthogonal", "sequential"] = "orthogonal"


class HighresConfig(_Section):
    """Stage 6: position-embedding resize and short continued training."""

    global_size: int = Field(518, gt=0)
    local_size: int = Field(98, gt=0)
    steps: int = Field(20_000, ge=0)
    warmup_steps: int = Field(10_000, ge=0)
    base_lr: float = Field(7.05e-5, gt=0)
    drop_path: float = Field(0.1, ge=0, lt=1)
    batch_size: int | None = Field(None, gt=0)  # None: train.optim.batch_size
    dataset: str | None = None  # Parquet or ImageFolder to train on; None: the caller's choice
    max_images: int | None = Field(None, gt=0)


class EvalConfig(_Section):
    """Stage 7: evaluation protocols and the data sets they run on."""

    knn_k: list[int] = [10, 20, 100, 200]
    knn_temperature: float = Field(0.07, gt=0)
    batch_size: int = Field(128, gt=0)
    datasets: dict[str, str] = {}  # name -> Parquet or ImageFolder path; "<set>-<split>" names pair splits
    max_images: int | None = Field(None, gt=0)  # per set, a deterministic random subset
    max_images_per_set: dict[str, int] = {}  # per-set override of max_images
    resolution: int | None = Field(None, gt=0)  # short side in px; None: each set's own size
    tasks: list[str] = ["auto"]  # or any of knn, linear, matryoshka, overcluster, incontext, ood, position,
    # correspondence, depth
    linear_c: float = Field(1.0, gt=0)  # inverse L2 strength of the logistic regression
    linear_max_iter: int = Field(200, gt=0)
    linear_with_patch_mean: bool = True  # also report CLS + mean patch token
    matryoshka_linear: bool = True  # linear probes in the truncation table (2 per dimension), besides k-NN
    overcluster_factors: list[int] = [1, 3, 10]  # K = factor * classes (1: Hungarian, >1: greedy many-to-one)
    pca_dim: int = Field(50, gt=0)
    kmeans_max_tokens: int = Field(20_000, gt=0)  # patch tokens the PCA / k-means are fitted on
    kmeans_n_init: int = Field(1, ge=1)  # k-means restarts (best inertia kept)
    mask_max_side: int = Field(96, gt=0)  # masks are compared on a grid with this long side
    incontext_k: int = Field(30, gt=0)
    incontext_temperature: float = Field(0.02, gt=0)
    incontext_bank_size: int = Field(10_000, gt=0)  # memory-bank patches (random subsample; exact search)
    ood_in: str | None = None  # set name (prefix) used as the in-distribution bank / queries
    ood_out: str | None = None  # set name (prefix) of the out-of-distribution queries
    ood_k: int = Field(10, gt=0)
    correspondence_images: int = Field(64, gt=0)  # test images warped per set group (keypoint correspondence)
    correspondence_warp: float = Field(1.0, ge=0)  # homography strength (0: identity; 1: eval/correspondence.py)
    depth: dict[str, str] = {}  # name -> depth Parquet (franca_core/eval/depth.py); none ships
    depth_ridge: float = Field(1e-3, gt=0)  # ridge penalty of the depth probe (standardised tokens)
    depth_max_patches: int = Field(100_000, gt=0)  # training patches the depth probe is fitted on
    figure_images: int = Field(4, ge=0)
    seed: int = 0
    baseline: bool = True  # also evaluate the same architecture at random init (seeded by seed), shown beside
    cache_dir: str | None = None  # feature cache; None: <out>/cache
    # where RASA fitting and evaluation run their backbone passes (franca_core.eval.device; bf16 autocast on a
    # GPU with native bf16): auto = CUDA where visible, else CPU. Operational, as is num_gpus: GPUs of a Ray task
    # the rasa and evaluate stages run in (0: in the stage's own process)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = Field(0, ge=0)


class TrackingConfig(_Section):
    """MLflow: the system of record."""

    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else a local SQLite store under storage.root
    experiment: str = "franca"
    registered_model_prefix: str = "franca"  # the model is registered as <prefix>-<profile>
    alias: str = "candidate"  # registry alias set on each newly registered version
    stage_retries: int = Field(2, ge=0)  # Prefect retries of the stages that can fail transiently (download, pretrain)
    retry_delay_s: float = Field(10.0, ge=0)  # first retry delay; doubles on each further retry
    artifact_limit_mb: float = Field(64.0, ge=0)  # outputs up to this size are copied into MLflow, larger: URI only
    hash_limit_mb: float | None = Field(None, gt=0)  # outputs above this are recorded by size only (None: hash all)


class StorageConfig(_Section):
    """Where stage outputs live: a local path or an s3:// URI (fsspec)."""

    root: str = ".franca/store"


class PipelineConfig(_Section):
    """The whole pipeline's configuration."""

    profile: str = "vitb14"
    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    dedup: DedupConfig = DedupConfig()
    train: TrainConfig = TrainConfig()
    rasa: RasaConfig = RasaConfig()
    highres: HighresConfig = HighresConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()


# ----------------------------------------------------------------------------------------------- loading
def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set both as a value and as a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(data: Mapping[str, Any]) -> PipelineConfig:
    """Validate a nested mapping; a wrong key or value raises one ConfigError naming the key."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "<root>"
        got = f" (got {first['input']!r})" if first["type"] != "extra_forbidden" else ""
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        raise ConfigError(f"config key '{key}': {msg}{got}{more}") from None


def load_config(profile: str | Path = "tiny", overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load a profile name (``tiny``, ``vitb14``, ...) or a YAML path, then apply dotted overrides.

    A YAML file may name a base profile with ``profile: tiny``; its keys then override that profile.
    """
    path = Path(profile)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path)
        base_name = data.get("profile")
        if isinstance(base_name, str) and base_name in PROFILES:
            data = merge(_read_yaml(PROFILE_DIR / f"{base_name}.yaml"), data)
    elif str(profile) in PROFILES:
        data = _read_yaml(PROFILE_DIR / f"{profile}.yaml")
    else:
        raise ConfigError(f"unknown profile {str(profile)!r}. Valid: {list(PROFILES)} or a path to a .yaml file")
    return build_config(merge(data, parse_overrides(overrides)))


def config_digest(section: BaseModel | Mapping[str, Any]) -> str:
    """sha256 of a config section's canonical JSON: part of every stage's input digest."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else dict(section)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
