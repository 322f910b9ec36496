"""The Agglomerator: a GLOM-style column network (Garau et al., CVPR'22), as the distillation paper uses it.

An image becomes a grid of columns. Every column holds one vector per level (subpart, part, whole).
For `iters` steps each level is updated from four contributions, weighted by four learned scalars
and averaged:

    previous value  +  bottom-up(level below)  +  top-down(level above)  +  consensus attention

Level 0's "level below" is the image token of its column; the top level has no top-down input.
Consensus attention lets every column attend to all other columns at the same level, which is what
makes "islands" of agreeing vectors appear.

Shapes: tokens (b, n, d), levels (b, n, L, d) with n = columns, L = levels, d = patch_dim.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Similarity a column gets with itself in consensus attention: it must not simply copy itself.
SELF_SIMILARITY = -5e-4


@dataclass(frozen=True)
class AgglomeratorConfig:
    image_size: int = 224
    grid: int = 14  # columns per side; the conv tokenizer divides the image by 4, patches tile that map
    patch_dim: int = 256
    levels: int = 3
    iters: int | None = None  # default 2 * levels
    mlp_mult: int = 4
    levels_encoder: bool = False  # Table 2: per-level MLP to the target space (the paper's best variant: off)
    target_dim: int = 256  # size of the mask embeddings the levels regress
    n_classes: int = 10

    @property
    def n_iters(self) -> int:
        return self.iters if self.iters is not None else 2 * self.levels

    @property
    def patch_size(self) -> int:
        """Side of one column's patch on the tokenizer's (image_size / 4) feature map."""
        feature_side = self.image_size // 4
        if self.image_size % 4 or feature_side % self.grid:
            raise ValueError(f"image_size {self.image_size} / 4 must be divisible by grid {self.grid}")
        return feature_side // self.grid

    @property
    def n_columns(self) -> int:
        return self.grid * self.grid


class ConvTokenizer(nn.Sequential):
    """Three 3x3 convs (stride 2, 1, 1) and a stride-2 max-pool: image -> (image/4)^2 map of `channels`."""

    def __init__(self, channels: int, in_channels: int = 3):
        def conv_bn_relu(c_in, c_out, stride):
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        super().__init__(
            *conv_bn_relu(in_channels, channels // 2, 2),
            *conv_bn_relu(channels // 2, channels // 2, 1),
            *conv_bn_relu(channels // 2, channels, 1),
            nn.MaxPool2d(3, stride=2, padding=1),
        )


class Sine(nn.Module):
    """sin(x): the top-down nets' activation, as in the original Agglomerator (SIREN-style)."""

    def forward(self, x):
        return torch.sin(x)


class ColumnMLP(nn.Module):
    """One MLP per level, applied to every column: grouped 1x1 convs over (levels * dim) channels.

    LayerNorm runs over the column axis (the original code's choice, kept for its parameter count).
    `widths` lists hidden and output widths per level, e.g. (4d, d) for the bottom-up / top-down nets.
    """

    def __init__(self, dim: int, groups: int, n_columns: int, widths: tuple[int, ...], activation):
        super().__init__()
        layers, width_in = [], dim
        for i, width_out in enumerate(widths):
            if i:
                layers.append(activation())
            layers += [nn.LayerNorm(n_columns), nn.Conv1d(width_in * groups, width_out * groups, 1, groups=groups)]
            width_in = width_out
        self.net = nn.Sequential(*layers)
        self.groups = groups

    def forward(self, levels):  # (b, n, g, d) -> (b, n, g, d_out)
        b, n, g, d = levels.shape
        out = self.net(levels.permute(0, 2, 3, 1).reshape(b, g * d, n))
        return out.reshape(b, g, -1, n).permute(0, 3, 1, 2)


def consensus_attention(levels):
    """Each column attends to all other columns at the same level (keys L2-normalised, values raw)."""
    b, n, L, d = levels.shape
    keys = F.normalize(levels, dim=-1)
    sim = torch.einsum("bild,bjld->blij", levels, keys) * d**-0.5
    self_mask = torch.eye(n, dtype=torch.bool, device=levels.device)
    sim = sim.masked_fill(self_mask, SELF_SIMILARITY)
    return torch.einsum("blij,bjld->bild", sim.softmax(dim=-1), levels)


class Agglomerator(nn.Module):
    def __init__(self, cfg: AgglomeratorConfig):
        super().__init__()
        self.cfg = cfg
        d, L, n, p = cfg.patch_dim, cfg.levels, cfg.n_columns, cfg.patch_size
        if d % (p * p):
            raise ValueError(f"patch_dim {d} must be divisible by patch_size^2 = {p * p}")
        self.tokenizer = ConvTokenizer(channels=d // (p * p))
        self.init_levels = nn.Parameter(torch.randn(L, d))
        self.bottom_up = ColumnMLP(d, L, n, (cfg.mlp_mult * d, d), nn.GELU)
        self.top_down = ColumnMLP(d, L - 1, n, (cfg.mlp_mult * d, d), Sine)
        # weights of (previous, bottom-up, top-down, consensus)
        self.contribution_weights = nn.Parameter(torch.full((4,), 0.25))
        # the top level has no top-down input, so it averages 3 contributions instead of 4
        self.register_buffer("n_contributions", torch.tensor([4.0] * (L - 1) + [3.0]).view(1, 1, L, 1), persistent=False)

    def tokens(self, images):  # (b, 3, H, W) -> (b, n, d): each column's patch of the feature map, flattened
        x = self.tokenizer(images)
        b, c, h, w = x.shape
        p = self.cfg.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def initial_levels(self, tokens):  # (b, n, d) -> (b, n, L, d): every column starts from the same learnt vectors
        return self.init_levels.expand(tokens.shape[0], tokens.shape[1], -1, -1)

    def contributions(self, tokens, levels) -> dict:
        """The four inputs of one iteration's update, each (b, n, L, d): tokens (b, n, d), levels (b, n, L, d)."""
        below = torch.cat([tokens.unsqueeze(2), levels[:, :, :-1]], dim=2)  # level 0 reads its column's token
        return {
            "previous": levels,
            "bottom_up": self.bottom_up(below),
            "top_down": F.pad(self.top_down(levels[:, :, 1:]), (0, 0, 0, 1)),  # zero for the top level
            "consensus": consensus_attention(levels),
        }

    def step(self, tokens, levels):
        """One iteration: the weighted sum of the four contributions, divided by their number at each level."""
        total = sum(w * c for w, c in zip(self.contribution_weights, self.contributions(tokens, levels).values()))
        return total / self.n_contributions

    def forward(self, images):
        """Returns the levels after the last iteration, (b, n, L, d)."""
        tokens = self.tokens(images)
        levels = self.initial_levels(tokens)
        for _ in range(self.cfg.n_iters):
            levels = self.step(tokens, levels)
        return levels


class Distiller(nn.Module):
    """What pretraining trains: the Agglomerator's levels, mapped to the teacher's embedding space.

    With `levels_encoder` off (the paper's best variant, Table 2) the levels themselves regress the
    targets, so patch_dim must equal the targets' size; with it on, a 4-layer per-level MLP maps them.
    """

    def __init__(self, backbone: Agglomerator):
        super().__init__()
        cfg = backbone.cfg
        self.backbone = backbone
        if cfg.levels_encoder:
            hidden = cfg.mlp_mult * cfg.patch_dim
            widths = (hidden, hidden, hidden, cfg.target_dim)
            self.levels_encoder = ColumnMLP(cfg.patch_dim, cfg.levels, cfg.n_columns, widths, nn.GELU)
        elif cfg.target_dim != cfg.patch_dim:
            raise ValueError(
                f"targets have {cfg.target_dim} dims but patch_dim is {cfg.patch_dim}: "
                "set patch_dim to the embedder's size or turn levels_encoder on"
            )
        else:
            self.levels_encoder = nn.Identity()

    def forward(self, images):
        return self.levels_encoder(self.backbone(images))


class ProbeHead(nn.Sequential):
    """The reference classifier on the top level: LayerNorm, dropout, flatten, LayerNorm, dropout, linear."""

    def __init__(self, n_columns: int, dim: int, n_classes: int, dropout: float = 0.5):
        super().__init__(
            nn.LayerNorm(dim),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.LayerNorm(n_columns * dim),
            nn.Dropout(dropout),
            nn.Linear(n_columns * dim, n_classes),
        )


def top_level_features(levels):
    """Top level, L2-normalised along the *column* axis as the reference code does (dim 1 of (b, n, d)).

    Likely unintended there (features are usually normalised along d), but kept so the probe matches the
    paper's numbers; the LayerNorms of the head rescale it anyway.
    """
    return F.normalize(levels[:, :, -1], dim=1)


class Classifier(nn.Module):
    """Probe: a frozen pretrained Agglomerator and a trainable ProbeHead on its top level."""

    def __init__(self, backbone: Agglomerator):
        super().__init__()
        cfg = backbone.cfg
        self.backbone = backbone.requires_grad_(False)
        # beside its backbone: a classifier built around a trained backbone on the GPU runs there as it is
        self.head = ProbeHead(cfg.n_columns, cfg.patch_dim, cfg.n_classes).to(next(backbone.parameters()).device)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics stay those of pretraining
        return self

    def forward(self, images):
        with torch.no_grad():
            features = top_level_features(self.backbone(images))
        return self.head(features)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg: AgglomeratorConfig) -> dict[str, int]:
    """Parameters as the paper counts them: Agglomerator (+ levels encoder if on) + classification head."""
    distiller = Distiller(Agglomerator(cfg))
    counts = {
        "backbone": count_parameters(distiller.backbone),
        "levels_encoder": count_parameters(distiller.levels_encoder),
        "head": count_parameters(ProbeHead(cfg.n_columns, cfg.patch_dim, cfg.n_classes)),
    }
    return counts | {"total": sum(counts.values())}
