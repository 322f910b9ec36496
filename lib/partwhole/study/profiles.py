"""Profiles: every setting of a study run in one frozen, validated record.

The defaults are the paper's setting, each with where it comes from: full-size Imagenette, SAM ViT-H prompted as
the authors prompted it, pretrained MaxViT-pico, the paper's Agglomerator and hyper-parameters (a GPU and internet).
The other profiles list only what they change:

- `embedded`, the offline default: generated part-whole scenes, their ground-truth teacher, a tiny timm ResNet
  trained here as mask embedder, a small Agglomerator: the method in miniature, on a 2-core CPU in minutes.
- `rehearsal`: the paper profile's own code end to end on a CPU (same models' code, random weights, a generated
  folder in Imagenette's layout), with only the sizes shrunk: it proves the path runs, and measures nothing.

Any field can be overridden (`get_profile("embedded", pretrain_epochs=2)`, `--set pretrain_epochs=2`); the
runner and every notebook take the same overrides, and every result file records the profile it ran with. A
value of the wrong type, out of range or not among a field's choices is refused when the profile is made
(SettingsError), before anything runs.
"""
import ast
import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
from pathlib import Path
import types
import typing
from dataclasses import dataclass, field

from ..core.artefacts import SettingsError
from ..datasets.synthetic import SceneStyle
from ..method.model import AgglomeratorConfig


@dataclass(frozen=True)
class Profile:
    name: str = "paper"
    # data
    dataset: str = "imagenette"  # Imagenette 2 full size (9,469 train / 3,925 val), as the paper; or generated data
    image_size: int = 224  # resized (not cropped) to 224 px, as the reference data module does
    dataset_path: str | None = None  # an Imagenette folder already here; None: fastai's copy, downloaded if missing
    train_per_class: int = 80  # generated datasets only: images per class
    val_per_class: int = 30  # generated datasets only
    holdout_fraction: float = 0.2  # carved out of train, as the reference data module does (its "validation")
    on_bad_image: str = "stop"  # unreadable image files: "stop" before training, or "skip" them (listed either way)
    dataset_seed: int = 42  # generated datasets only: made once, the same for every training seed
    scene_scale: tuple = (0.4, 0.8)  # generated scenes: the whole's larger side, as a fraction of the image side
    scene_clutter: tuple = (2, 6)  # generated scenes: how many clutter shapes lie behind the whole
    scene_split_clutter: bool = False  # generated scenes: each clutter shape in two halves (subparts of its own)
    scene_textured: bool = False  # generated scenes: each part's subparts patterned by the part's shape
    scene_background_parts: bool = False  # generated scenes: the background a whole of parts and subparts
    # teacher
    teacher: str = "sam"  # SAM (paper Sec. 3.1); "ground_truth": the generated scenes' true hierarchy
    sam_model: str = "vit_h"  # SAM ViT-H, sam_vit_h_4b8939.pth (paper); vit_l, vit_b; "tiny": random weights only
    sam_checkpoint_dir: str = "checkpoints"  # where the SAM checkpoint is looked for and downloaded to
    point_labels: str = "reference"  # label i for point i, as the authors' code prompts SAM; "positive": label 1
    level_order: str = "area"  # levels sorted by mask area, subpart < part < whole (our choice); "sam": SAM's order
    random_weights: bool = False  # every downloaded model (SAM, timm embedders) with random weights: rehearsals only
    # mask embedder: a timm model name, with its own eval transform
    embedder: str = "maxvit_rmlp_pico_rw_256.sw_in1k"  # MaxViT-pico, ImageNet-1k supervised, 256-d (paper Sec. 3.2)
    embedder_pretrained: bool = True  # its ImageNet weights, from the Hugging Face hub
    embedder_kwargs: dict = field(default_factory=dict)  # more arguments of timm.create_model
    embedder_data_config: dict = field(default_factory=dict)  # overrides of timm's resolved data config
    embedder_image_size: int | None = None  # None: the embedder's own input size; a size: every embedder built for it
    embedder_weights: str | None = None  # a weights file (in partwhole/weights/, or a path): the embedded stand-in
    embedder_seed: int = 42  # the embedder's random weights (where it has no others), fixed like hub weights
    control_embedder: str | None = "vit_small_patch16_224.dino"  # notebook 07's self-supervised embedder; None: none
    crop: str = "none"  # masked images keep their full frame (Table 1's best); "bbox": cropped to the mask
    # student: the Agglomerator (paper Sec. 3.3)
    grid: int = 14  # 14 x 14 columns
    patch_dim: int = 256  # = MaxViT-pico's features, so the levels regress the targets directly
    levels: int = 3  # subpart, part, whole: the teacher's three masks
    levels_encoder: bool = False  # Table 2's best: removed
    level_weights: tuple = (0.1, 0.2, 0.7)  # the loss's alpha per level, subpart / part / whole (paper Sec. 4.2)
    # optimisation: Lion, for pretraining and probe (paper Sec. 4.2)
    batch_size: int = 512  # paper
    lr: float = 5e-4  # paper (the authors' config file: 3e-4)
    wd: float = 0.075  # paper (the authors' config file: 0.05)
    betas: tuple = (0.95, 0.98)  # the authors' Lion betas
    schedule: str = "reference"  # the authors' one-cycle, sized for 2,000 epochs of 45,000 images; "one_cycle": ours
    pretrain_epochs: int = 100  # not stated anywhere (the authors stop by hand); our choice
    probe_epochs: int = 18  # Table 4's longer run
    probe_epochs_short: int = 5  # Table 4's shorter run (90.17%), the same probe stopped at 5 epochs
    overfit_steps: int = 200  # notebook 03's check that a fresh student can overfit one batch (not a paper setting)
    plateau_check: bool = False  # notebook 03 also pretrains for twice the epochs: does the probe still gain? (costly)
    probe_lr: float | None = None  # None: the pretraining's lr, as in the authors' code
    probe_wd: float | None = None  # None: the pretraining's wd, as in the authors' code
    # baselines: Table 3 supervised contrastive, Table 4 XResNet
    contrastive_configs: tuple = ("original",)  # the CVPR'22 172 M configuration; "ours" at 14 x 14 x 256: 2.55 B
    contrastive_epochs: int = 100  # SupCon pretraining (the reference runs thousands and stops by hand); our choice
    contrastive_lr: float | None = None  # SupCon pretraining's lr; None: the pretraining's lr
    xresnet_sizes: tuple = (128, 192, 256)  # px, Table 4's leaderboard entries
    xresnet_batch_sizes: tuple = (32, 64, 64)  # the entries' batch sizes
    xresnet_epochs: int = 5  # the entries' epochs
    xresnet_wds: tuple = (1e-4, 1e-2, 1e-2)  # the entries' weight decay, per size
    xresnet_normalize: bool = False  # the entries fed unnormalised inputs; True: ImageNet normalisation
    xresnet_pool: str = "kornia2020"  # the entries' MaxBlurPool (kornia 2020's); "kornia": kornia's current one
    xresnet_architecture: str = "xse_resnext50"  # one of fastai's xresnet family: the entries' (the paper: XResNet50)
    xresnet_widen: float = 1.0  # fastai's `widen`: every block's width scaled by it (the stem keeps its own)
    # data efficiency: the shares of the 80% fit set whose labels the labelled phases see (notebook 05)
    label_fractions: tuple = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    # run
    seed: int = 42  # the student's initialisation, the data order and the holdout
    device: str = "auto"  # "auto": cuda if available, else cpu; or "cpu", "cuda", "cuda:N"
    # speed: none of these changes what is computed beyond rounding (tests bound the differences)
    teacher_batch: int = 64  # points per SAM decoder call, masked images per embedder call
    teacher_images: int = 8  # images per SAM image-encoder call; their masks share embedder batches
    precision: str = "bfloat16"  # autocast in the embedder and pretraining: 1.91x the images/s on an H100
    sam_precision: str = "float32"  # SAM's masks in bfloat16 are unverified with the released weights
    channels_last: bool = True  # MaxViT's convolutions in channels-last (faster on GPUs)
    compile: bool = False  # torch.compile the pretrained model
    mask_cache: bool = True  # keep SAM's masks (bit-packed) so that the controls need not run SAM again
    sam_attention: str = "reference"  # "sdpa": SAM's image-encoder attention fused (speedups.py)
    embedder_batch: int | None = None  # masked images per embedder call; None: teacher_batch
    checkpoint_iterations: bool = False  # the Agglomerator's iterations recomputed in backward: less peak memory
    foreach_optimizer: bool = False  # Lion's step on all parameters at once (speedups.ForeachLion)

    def __post_init__(self):
        validate(self)

    def agglomerator_config(self, target_dim: int) -> AgglomeratorConfig:
        return AgglomeratorConfig(
            image_size=self.image_size,
            grid=self.grid,
            patch_dim=self.patch_dim,
            levels=self.levels,
            levels_encoder=self.levels_encoder,
            target_dim=target_dim,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def scene_style(self) -> SceneStyle:
        return SceneStyle(tuple(self.scene_scale), tuple(self.scene_clutter), self.scene_split_clutter,
                          self.scene_textured, self.scene_background_parts)

    def settings_of(self, fields) -> dict:
        return json.loads(json.dumps({name: getattr(self, name) for name in fields}))  # as they read back from JSON

    def targets_settings(self) -> dict:
        """What the targets depend on: the data, the teacher, the embedder (its seed only where it has no trained
        weights: the random weights it draws), the grid."""
        fields = DATA_FIELDS + TEACHER_FIELDS + EMBEDDER_FIELDS + ("grid", "levels")
        fixed_weights = self.embedder_weights is not None or (self.embedder_pretrained and not self.random_weights)
        return self.settings_of(fields + (() if fixed_weights else ("embedder_seed",)))

    def pretraining_settings(self) -> dict:
        """What a pretraining run depends on: every setting but those in NOT_IN_PRETRAINING (a method, so that the
        training code reads it without importing the study's settings)."""
        return self.settings_of([f.name for f in dataclasses.fields(self) if f.name not in NOT_IN_PRETRAINING])

    def scene_key(self) -> str:
        """A short name of the scene style, for folder names ("default" for the generator's own)."""
        style = self.scene_style()
        if style == SceneStyle():
            return "default"
        return hashlib.sha256(json.dumps(dataclasses.asdict(style)).encode()).hexdigest()[:8]


CHOICES = {
    # "synthetic": part-whole scenes with their hierarchy; "imagenette_like": JPEGs of mixed sizes and modes in
    # Imagenette's layout (wnid class folders), for rehearsals
    "dataset": ("imagenette", "synthetic", "imagenette_like"),
    "on_bad_image": ("stop", "skip"),
    "teacher": ("sam", "ground_truth"),
    "sam_model": ("vit_h", "vit_l", "vit_b", "tiny"),
    "point_labels": ("reference", "positive"),
    "level_order": ("area", "sam"),
    "crop": ("none", "bbox"),
    "schedule": ("reference", "one_cycle"),
    "precision": ("float32", "bfloat16"),
    "sam_precision": ("float32", "bfloat16"),
    "xresnet_pool": ("kornia2020", "kornia"),
    "sam_attention": ("reference", "sdpa"),
    "xresnet_architecture": ("xresnet18", "xresnet34", "xresnet50", "xresnext18", "xresnext34", "xresnext50",
                             "xse_resnet18", "xse_resnet34", "xse_resnet50", "xse_resnext18", "xse_resnext34",
                             "xse_resnext50"),  # fastai's xresnet family
}
AT_LEAST_ONE = ("image_size", "train_per_class", "val_per_class", "grid", "patch_dim", "batch_size", "pretrain_epochs",
                "probe_epochs", "probe_epochs_short", "overfit_steps", "contrastive_epochs", "xresnet_epochs", "teacher_batch",
                "teacher_images", "embedder_image_size", "embedder_batch")
AT_LEAST_ZERO = ("dataset_seed", "embedder_seed", "seed")
SEED_LIMIT = 2**32 - 1  # numpy's and torch's seeds must fit in 32 bits
SIZE_LIMIT = 2**31 - 1  # any count or size beyond this is a typo, and overflows torch's int32 indices


def _type_error(name: str, value, expected: str) -> SettingsError:
    return SettingsError(f"{name}={value!r} ({type(value).__name__}): {name} takes {expected}")


def _coerce(name: str, value, hint):
    """The value as the field's type: ints for int fields (not bools or floats), floats from ints, tuples from lists;
    SettingsError otherwise."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        if value is None:
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(name, value, "true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name, value, "a whole number" + (" or null" if optional else ""))
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(name, value, "a number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise _type_error(name, value, "a string" + (" or null" if optional else ""))
    elif hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(name, value, "a list")
        value = tuple(value)
    elif hint is dict:
        if not isinstance(value, dict):
            raise _type_error(name, value, "a mapping (JSON object)")
    return value


def _check_finite(name: str, value):
    """Refuse NaN and infinities anywhere in a field (a number, or a list or mapping holding numbers): JSON's NaN and
    Infinity parse as floats, and a run on them trains to NaN and writes it up as a result."""
    values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, (list, tuple, dict)):
            _check_finite(name, item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise SettingsError(f"{name}={value!r}: {name} takes finite numbers only (not NaN or infinity)")


def validate(profile: Profile):
    """Check and normalise every field (type, range, choices, and the fields that depend on each other)."""
    hints = typing.get_type_hints(Profile)
    for f in dataclasses.fields(Profile):
        object.__setattr__(profile, f.name, _coerce(f.name, getattr(profile, f.name), hints[f.name]))
    p = profile
    for f in dataclasses.fields(Profile):
        _check_finite(f.name, getattr(p, f.name))
    for name, allowed in CHOICES.items():
        if getattr(p, name) not in allowed:
            raise SettingsError(f"{name}={getattr(p, name)!r}: {name} takes one of {', '.join(map(repr, allowed))}")
    for name in AT_LEAST_ONE:
        value = getattr(p, name)
        if value is not None and not 1 <= value <= SIZE_LIMIT:
            raise SettingsError(f"{name}={value!r}: {name} takes a whole number from 1 to {SIZE_LIMIT}")
    for name in AT_LEAST_ZERO:
        if not 0 <= getattr(p, name) <= SEED_LIMIT:
            raise SettingsError(f"{name}={getattr(p, name)!r}: {name} takes a whole number from 0 to {SEED_LIMIT} "
                                "(numpy's and torch's seeds are 32-bit)")
    if not 0 < p.holdout_fraction < 1:
        raise SettingsError(f"holdout_fraction={p.holdout_fraction!r}: holdout_fraction takes a number between 0 and 1")
    for name in ("lr", "probe_lr", "contrastive_lr", "xresnet_widen"):
        if getattr(p, name) is not None and getattr(p, name) <= 0:
            raise SettingsError(f"{name}={getattr(p, name)!r}: {name} takes a number above 0")
    for name in ("wd", "probe_wd"):
        if getattr(p, name) is not None and getattr(p, name) < 0:
            raise SettingsError(f"{name}={getattr(p, name)!r}: {name} takes a number of at least 0")
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p.scene_scale)
    if len(p.scene_scale) != 2 or not numbers or not 0 < p.scene_scale[0] <= p.scene_scale[1] <= 1:
        raise SettingsError(f"scene_scale={list(p.scene_scale)!r}: scene_scale takes two fractions of the image side, "
                            "0 < low <= high <= 1")
    whole = all(isinstance(n, int) and not isinstance(n, bool) for n in p.scene_clutter)
    if len(p.scene_clutter) != 2 or not whole or not 0 <= p.scene_clutter[0] <= p.scene_clutter[1]:
        raise SettingsError(f"scene_clutter={list(p.scene_clutter)!r}: scene_clutter takes two whole numbers, "
                            "0 <= low <= high")
    if len(p.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in p.betas):
        raise SettingsError(f"betas={list(p.betas)!r}: betas takes two numbers in [0, 1)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", p.device):
        raise SettingsError(f"device={p.device!r}: device takes 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if p.levels != 3:
        raise SettingsError(f"levels={p.levels!r}: levels takes 3, one per mask of the teacher (subpart, part, whole)")
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in p.level_weights)
    if len(p.level_weights) != p.levels or not numbers or not sum(p.level_weights) > 0:
        raise SettingsError(f"level_weights={list(p.level_weights)!r}: level_weights takes one weight per level "
                            f"({p.levels}), each at least 0 and not all 0, e.g. [0.1, 0.2, 0.7]")
    if p.image_size % 4 or (p.image_size // 4) % p.grid:
        raise SettingsError(f"image_size={p.image_size}, grid={p.grid}: image_size / 4 (the Agglomerator's feature map) "
                            "must be a multiple of grid")
    patch = p.image_size // 4 // p.grid
    if p.patch_dim % (patch * patch):
        raise SettingsError(f"patch_dim={p.patch_dim}: patch_dim takes a multiple of {patch * patch} (each column is a "
                            f"{patch} x {patch} cell of the Agglomerator's feature map)")
    unknown = set(p.contrastive_configs) - {"ours", "original"}
    if unknown:
        raise SettingsError(f"contrastive_configs={list(p.contrastive_configs)!r}: takes 'ours' and/or 'original'")
    if len(p.xresnet_sizes) != len(p.xresnet_batch_sizes) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p.xresnet_sizes + p.xresnet_batch_sizes):
        raise SettingsError(f"xresnet_sizes={list(p.xresnet_sizes)}, xresnet_batch_sizes={list(p.xresnet_batch_sizes)}: "
                            "two lists of positive whole numbers of the same length")
    if len(p.xresnet_wds) != len(p.xresnet_sizes) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in p.xresnet_wds):
        raise SettingsError(f"xresnet_wds={list(p.xresnet_wds)}: one weight decay (a number of at least 0) per size of "
                            f"xresnet_sizes={list(p.xresnet_sizes)}")
    if p.dataset_path is not None and p.dataset != "imagenette":
        raise SettingsError(f"dataset_path={p.dataset_path!r}: the {p.dataset!r} dataset is generated, it reads no folder; "
                            "give dataset_path with dataset='imagenette' (or leave it out)")
    if not p.label_fractions or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1
                                        for f in p.label_fractions):
        raise SettingsError(f"label_fractions={list(p.label_fractions)!r}: label_fractions takes a list of fractions "
                            "of the fit set, each in (0, 1], e.g. [0.01, 0.1, 1.0]")
    if p.teacher == "ground_truth" and p.dataset != "synthetic":
        raise SettingsError("teacher='ground_truth' reads the generated scenes' hierarchy: it needs dataset='synthetic'")
    if p.dataset == "synthetic" and p.image_size < 32:
        raise SettingsError(f"image_size={p.image_size}: generated scenes need at least 32 px for subparts to show")
    if p.sam_model == "tiny" and not p.random_weights:
        raise SettingsError("sam_model='tiny' has no released weights: it needs random_weights=true")


# Which settings reach which artefact: each artefact is kept in a folder keyed on the settings that reach it (no more,
# so that a finished one is reused whenever they are unchanged; no less, so that runs of other settings live beside it)
DATA_FIELDS = ("dataset", "dataset_path", "image_size", "train_per_class", "val_per_class", "on_bad_image",
               "dataset_seed", "scene_scale", "scene_clutter", "scene_split_clutter", "scene_textured",
               "scene_background_parts")
TEACHER_FIELDS = ("teacher", "sam_model", "point_labels", "level_order", "random_weights", "sam_precision",
                  "sam_attention")
EMBEDDER_FIELDS = ("embedder", "embedder_pretrained", "embedder_kwargs", "embedder_data_config", "embedder_image_size",
                   "embedder_weights", "precision")
# never reach a pretraining run: the probe's, the baselines', the teacher's batching, where files come from, the device
NOT_IN_PRETRAINING = ("name", "probe_epochs", "probe_epochs_short", "probe_lr", "probe_wd", "overfit_steps",
                      "plateau_check", "contrastive_configs", "contrastive_epochs", "xresnet_sizes", "xresnet_batch_sizes",
                      "xresnet_epochs", "xresnet_wds", "xresnet_normalize", "xresnet_pool", "xresnet_architecture",
                      "xresnet_widen", "contrastive_lr", "label_fractions", "teacher_batch",
                      "teacher_images", "embedder_batch", "mask_cache", "control_embedder", "sam_checkpoint_dir",
                      "device", "compile")


def settings_key(settings: dict) -> str:
    """A short folder name for a settings record (8 hex digits of its SHA-256)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


PAPER = Profile()
PROFILES = {
    "paper": PAPER,
    "embedded": dataclasses.replace(
        PAPER,
        name="embedded",
        dataset="synthetic",
        image_size=64,
        # scenes where the levels differ at the grid's resolution: the whole fills most of the image, each part's
        # subparts carry a texture of the part's shape (what lets an embedder tell parts apart in a masked image),
        # clutter shapes have halves of their own and the background is cut into parts and subparts too
        scene_scale=(0.5, 0.85),
        scene_clutter=(2, 5),
        scene_split_clutter=True,
        scene_textured=True,
        scene_background_parts=True,
        teacher="ground_truth",
        # timm's tiny test ResNet (a timm model like any other), 32 wide at its last stage like the student's
        # columns, trained with labels on scenes of its own and shipped (python -m partwhole.study.embedder_training)
        embedder="test_resnet",
        embedder_pretrained=False,
        embedder_kwargs={"channels": (32, 48, 48, 32)},
        embedder_data_config={"input_size": (3, 64, 64), "crop_pct": 1.0},
        embedder_weights="embedded-embedder.pt",
        control_embedder=None,  # no self-supervised weights offline
        grid=8,
        patch_dim=32,
        batch_size=16,  # 40 steps per epoch on 640 images: at 64 the student barely moves in 8 epochs
        lr=2e-3,
        schedule="one_cycle",  # the reference schedule never leaves warm-up: nothing would be learnt in minutes
        # 1,280 steps: at 16 epochs twice the epochs still lowered the held-out loss by 34% on seeds 42, 43 and 44
        # (0.288 to 0.191, 0.280 to 0.185, 0.289 to 0.191) and moved val by -2.3, +2.3 and +6.7 points, 2.2 on the
        # mean; notebook 03 checks 64
        pretrain_epochs=32,
        probe_epochs=30,
        probe_epochs_short=5,
        probe_lr=3e-4,  # at the pretraining's 2e-3 the probe overfits within a few epochs (val loss climbs)
        plateau_check=True,
        teacher_batch=256,
        contrastive_configs=("ours",),  # the 172 M original is only counted here, not trained
        # 1,920 steps at half the distillation's rate: at 2e-3 its loss stays near ln 31 = 3.43 for a number of
        # epochs that depends on the seed (24 epochs: 80.7%, 93.0%, 8.3% on seeds 42, 43, 44; 48 epochs: seed 42
        # never left it), at 1e-3 x 48 epochs it left it on each seed (91.3%, 98.0%, 99.0%) (docs/report.md)
        contrastive_epochs=48,
        contrastive_lr=1e-3,
        xresnet_sizes=(32, 48, 64),  # Table 4's 128/192/256 px scaled to the 64 px scenes
        xresnet_pool="kornia",  # kornia 2020's 5 x 5 reflect-padded blur needs maps above 2 px: 32 px ends at 2
        xresnet_wds=(1e-2, 1e-2, 1e-2),  # the recipe's usual weight decay and ImageNet normalisation at every size
        xresnet_normalize=True,
        # fastai's smallest xresnet at a quarter of its widths (0.74 M parameters; xse_resnext50's 25.6 M saw 10-20
        # steps in a CPU's minutes and stayed at chance), in batches of 16 as the distillation: 40 steps an epoch
        xresnet_architecture="xresnet18",
        xresnet_widen=0.25,
        xresnet_batch_sizes=(16, 16, 16),
        xresnet_epochs=32,  # 1,280 steps, the distillation's
        label_fractions=(0.01, 0.03, 0.1, 0.3, 1.0),  # 1, 2, 6, 19 and 64 images a class; each point costs a full run
        precision="float32",  # bfloat16 autocast is slower than float32 on a CPU
        channels_last=False,
        mask_cache=False,  # the ground-truth teacher is cheaper than reading masks back
    ),
    "rehearsal": dataclasses.replace(
        PAPER,
        name="rehearsal",
        dataset="imagenette_like",  # JPEGs of mixed sizes and modes in wnid folders, read by Imagenette's code
        train_per_class=2,  # with holdout_fraction 0.5, one image per class to fit and one held out
        val_per_class=1,
        holdout_fraction=0.5,
        random_weights=True,
        sam_model="tiny",  # registry ViT-B: 54 s per image on a 2-core CPU, 27 min for the rehearsal's 30 images
        embedder_image_size=32,  # MaxViT-pico at 256 px: 4 masked images/s here, 588 of them per image and mode
        pretrain_epochs=1,
        probe_epochs=1,
        probe_epochs_short=1,
        overfit_steps=2,  # 3 s a step at 224 px on a 2-core CPU
        plateau_check=True,  # notebook 03's second run at twice the epochs: 2 more steps here
        batch_size=8,
        contrastive_epochs=1,
        xresnet_epochs=1,
        xresnet_batch_sizes=(4, 8, 8),
        label_fractions=(0.5, 1.0),  # one image per class to fit: every smaller share is that one image too
        teacher_batch=196,
        teacher_images=4,
        precision="float32",
        channels_last=False,
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """A profile by name with fields overridden; SettingsError (one line) for an unknown profile or field, or a value
    the field does not take."""
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}: choose one of {', '.join(sorted(PROFILES))}")
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        close = {k: [f for f in sorted(known) if f.startswith(k[:4])] for k in unknown}
        hint = "; ".join(f"{k} (did you mean {', '.join(v)}?)" if v else k for k, v in close.items())
        raise SettingsError(f"unknown profile field {hint}: the fields are listed in partwhole/study/profiles.py")
    return dataclasses.replace(PROFILES[name], **overrides)


def add_profile_arguments(parser, default: str):
    """The command-line options every entry point shares: --profile and repeatable --set FIELD=VALUE."""
    parser.add_argument("--profile", default=default, help=f"one of {', '.join(sorted(PROFILES))} (default {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (a JSON value, else a string), repeatable: e.g. pretrain_epochs=2")


def refuse(error: Exception) -> int:
    """A command's answer to bad settings: one line on stderr, exit status 2, before anything runs."""
    print(f"partwhole: {error}", file=sys.stderr)
    return 2


def parse_overrides(pairs: list[str]) -> dict:
    """Command-line `--set FIELD=VALUE` pairs as profile overrides: each value read as JSON, else as a string; a
    dataset_path is made absolute (the notebooks run in notebooks/)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingsError(f"--set {pair!r}: write FIELD=VALUE, e.g. --set pretrain_epochs=2")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a plain string, e.g. --set dataset_path=/data/imagenette2
        if key == "dataset_path" and isinstance(overrides[key], str):
            overrides[key] = str(Path(overrides[key]).expanduser().resolve())
    return overrides


# The parameters every notebook shares, with the types they take (others are checked against their default's type)
NOTEBOOK_PARAMETERS = {"profile": (str,), "overrides": (dict, str, type(None)), "results_dir": (str, type(None)),
                       "runs_dir": (str, type(None)), "seeds": (list, type(None))}


def _assigned(source: str) -> dict:
    """{name: value} of a cell's top-level `name = literal` lines (a value that is not a literal: ...)."""
    values = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    values[target.id] = ...
    return values


def _takes(value, default, allowed) -> bool:
    if allowed is not None:
        return isinstance(value, allowed)
    if default is None or default is ...:
        return True
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(default)


def check_notebook_parameters(shell=None):
    """A notebook's check of what papermill gave it, called in the cell after the parameters cell: papermill only warns
    about a name the parameters cell does not declare (a typo runs the defaults) and passes any type. SettingsError
    (one line) for an unknown name or a value of another type than the parameter takes. Reads the cells run so far
    (IPython's history): the parameters cell, then papermill's injected one; a notebook run by hand has none."""
    shell = shell or __import__("IPython").get_ipython()
    cells = list(shell.user_ns.get("In", []))[:-1] if shell is not None else []
    if len(cells) < 2 or not cells[-1].lstrip().startswith("# Parameters"):
        return  # no parameters were injected: the defaults
    received, declared = _assigned(cells[-1]), _assigned(cells[-2])
    unknown = sorted(set(received) - set(declared))
    if unknown:
        close = {k: difflib.get_close_matches(k, declared, n=1) for k in unknown}
        names = ", ".join(f"{k} (did you mean {v[0]}?)" if v else k for k, v in close.items())
        raise SettingsError(f"unknown notebook parameter {names}: this notebook takes {', '.join(declared)}")
    for name, value in received.items():
        allowed = NOTEBOOK_PARAMETERS.get(name)
        if not _takes(value, declared[name], allowed):
            kinds = allowed or (type(declared[name]),)
            expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise SettingsError(f"notebook parameter {name}={value!r} ({type(value).__name__}): {name} takes {expected}")


def overrides_from(value) -> dict:
    """A notebook's `overrides` parameter as a dict: a dict, or a JSON object given as a string (papermill -p)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise SettingsError(f"overrides={value!r} is not a JSON object ({error}); with papermill give it as YAML: "
                                """-y '{"overrides": {"seed": 1}}'""") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(f"overrides={value!r}: overrides takes a mapping of profile fields to values")
    return value
