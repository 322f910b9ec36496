"""Table 3's baseline: the original Agglomerator's supervised contrastive pretraining (Garau et al., CVPR'22).

Phase 1: every image is seen as two RandAugment views; the Agglomerator's top level goes through a contrastive
head (an MLP on all columns flattened, to 512-d, L2-normalised) and the SupCon loss (Khosla et al. 2020,
temperature 0.07) pulls together the views of images of the same class. Phase 2: the network is frozen and a
classifier (Linear, GELU, Linear) on the 512-d contrastive output is trained with cross-entropy.

The same fastai pieces as the distillation run: Lion and one-cycle from `train`, the 20% holdout and the val
folder for scoring. Phase 2 sees no augmentation, so its features are computed once, as in `train.probe`.

"Original configuration" (`ORIGINAL`): the authors' config/config_IMAGENETTE_original.cfg, the Agglomerator their
Table 3 lists at 172 M parameters: 256 px images, a 64 px tokenizer map cut into 32 x 32 patches (2 x 2 columns)
of 2,048 dims, 2 levels (4 iterations), a 512-d contrastive head; with its classifier, 172,331,116 parameters.
That file's optimisation (AdamW, lr 0.05, batch 1,024) is not used: every network here trains with Lion, as the
paper says of all its networks.

Table 3's "None" row, at that configuration with RandAugment: the released code can only mean the classifier
trained on the frozen output of the randomly initialised network and its contrastive head (`FrozenClassifier`),
each image a new RandAugment view.
"""
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from PIL import Image
from torch import nn
from torchvision.transforms import RandAugment

from ..core.devices import frozen_on
from ..core.timing import announce
from ..method.model import Agglomerator, AgglomeratorConfig, count_parameters
from ..method.train import fit, fit_head, lion, loaders, to_model_input
from ..study.profiles import Profile

TEMPERATURE = 0.07  # the reference's temperature and base temperature
CONTRAST_DIM = 512
DROPOUT = 0.3  # the reference's contrastive-head dropout
N_VIEWS = 2

# config_IMAGENETTE_original.cfg: image_size 256, conv_image_size 64, patch_size 32, patch_dim 2048, levels 2
ORIGINAL = AgglomeratorConfig(image_size=256, grid=2, patch_dim=2048, levels=2, target_dim=2048)


def supcon_loss(features, labels, temperature: float = TEMPERATURE, base_temperature: float = TEMPERATURE):
    """Supervised contrastive loss. features (batch, views, dim), L2-normalised; labels (batch,).

    Every view is an anchor; its positives are all other views of images with its label (its own other
    views included), and the softmax runs over all views but itself.
    """
    b, v, _ = features.shape
    z = features.reshape(b * v, -1)
    y = labels.repeat_interleave(v)
    is_self = torch.eye(b * v, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(is_self, -torch.inf)
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~is_self
    mean_log_prob = log_prob.masked_fill(~positives, 0).sum(dim=1) / positives.sum(dim=1)
    return -(temperature / base_temperature) * mean_log_prob.mean()


class AugmentedViews(torch.utils.data.Dataset):
    """`n_views` independent RandAugment views of each image of the uint8 cache (as float model inputs, stacked for
    more than one), with its label.

    torchvision's RandAugment with its defaults (2 ops, magnitude 9) on PIL images, as the reference applies it
    (on PIL images it is also far faster than on tensors: under 1 ms per 224 px image instead of about 90)."""

    def __init__(self, pixels: np.ndarray, indices: np.ndarray, labels: np.ndarray, n_views: int = N_VIEWS,
                 augment=None):
        self.pixels, self.indices, self.labels, self.n_views = pixels, indices, labels, n_views
        self.augment = RandAugment() if augment is None else augment

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        image = Image.fromarray(np.asarray(self.pixels[j]))
        views = np.stack([np.asarray(self.augment(image)) for _ in range(self.n_views)])  # uint8 (views, H, W, 3)
        x = to_model_input(views)
        return (x if self.n_views > 1 else x[0]), torch.as_tensor(self.labels[j])


class ContrastiveHead(nn.Sequential):
    """The reference's head on the top level: LayerNorm per column, then an MLP on all columns flattened whose
    hidden width is columns x dim (most of the original's 172 M parameters), to `out_dim`."""

    def __init__(self, n_columns: int, dim: int, out_dim: int = CONTRAST_DIM, dropout: float = DROPOUT):
        width = n_columns * dim
        super().__init__(
            nn.LayerNorm(dim),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.LayerNorm(width),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.GELU(),
            nn.LayerNorm(width),
            nn.Dropout(dropout),
            nn.Linear(width, out_dim),
        )


class ClassifierHead(nn.Sequential):
    """Phase 2: the reference's classifier on the contrastive output."""

    def __init__(self, n_classes: int, dim: int = CONTRAST_DIM):
        super().__init__(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n_classes))


class ContrastiveAgglomerator(nn.Module):
    """What SupCon pretrains: an Agglomerator and the contrastive head on its top level."""

    def __init__(self, cfg: AgglomeratorConfig):
        super().__init__()
        self.backbone = Agglomerator(cfg)
        self.head = ContrastiveHead(cfg.n_columns, cfg.patch_dim)

    def embed(self, images):  # (b, 3, H, W) -> (b, CONTRAST_DIM), unit length
        return F.normalize(self.head(self.backbone(images)[:, :, -1]), dim=-1)

    def forward(self, views):  # (b, views, 3, H, W) -> (b, views, CONTRAST_DIM)
        return self.embed(views.flatten(0, 1)).unflatten(0, views.shape[:2])


class FrozenClassifier(nn.Module):
    """Table 3's "None": the classifier on the output of a frozen network (eval mode, no gradients) and its
    contrastive head, which are never trained."""

    def __init__(self, model: ContrastiveAgglomerator):
        super().__init__()
        self.frozen = model.requires_grad_(False)
        self.classifier = ClassifierHead(model.backbone.cfg.n_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, images):
        with torch.no_grad():
            features = self.frozen.embed(images)
        return self.classifier(features)


def agglomerator_config(name: str, profile: Profile) -> AgglomeratorConfig:
    """"ours": the profile's Agglomerator; "original": the CVPR'22 configuration the paper's Table 3 trained."""
    if name == "ours":
        return profile.agglomerator_config(target_dim=profile.patch_dim)  # no distillation targets here
    if name == "original":
        return ORIGINAL
    raise ValueError(f"unknown contrastive configuration {name!r}: use 'ours' or 'original'")


def parameter_counts(cfg: AgglomeratorConfig) -> dict[str, int]:
    """Parameters of the whole baseline, counted on the meta device (nothing allocated, so 172 M cost nothing)."""
    with torch.device("meta"):
        model, classifier = ContrastiveAgglomerator(cfg), ClassifierHead(cfg.n_classes)
    counts = {
        "backbone": count_parameters(model.backbone),
        "contrastive_head": count_parameters(model.head),
        "classifier": count_parameters(classifier),
    }
    return counts | {"total": sum(counts.values())}


def pretrain(profile: Profile, cfg: AgglomeratorConfig, splits: dict, device: str) -> tuple[Learner, dict]:
    """Phase 1, SupCon on two views of the "fit" images (its validation loss on the "holdout" ones), at the
    profile's `contrastive_lr` for `contrastive_epochs`.

    Returns the learner (its model is the ContrastiveAgglomerator) and the per-epoch losses."""
    profile = dataclasses.replace(profile, lr=profile.contrastive_lr or profile.lr)
    set_seed(profile.seed, reproducible=True)
    model = ContrastiveAgglomerator(cfg)
    # The held-out batches mix classes as the shuffled training batches do: the split is sorted by class, and in a
    # batch of one class every view is a positive, so its loss is at least log(2 x batch - 1) whatever the features
    pixels, holdout, labels = splits["holdout"]
    mixed = np.random.default_rng(profile.seed).permutation(holdout)
    dls = loaders(AugmentedViews(*splits["fit"]), AugmentedViews(pixels, mixed, labels), profile.batch_size, device)
    learn = Learner(dls, model, loss_func=supcon_loss, opt_func=lion(profile.betas))
    announce(learn, profile.contrastive_epochs, f"supervised contrastive pretraining, {cfg.image_size} px")
    return learn, fit(learn, profile, profile.contrastive_epochs)


@torch.inference_mode()
def embeddings(model: ContrastiveAgglomerator, pixels, indices, batch_size: int, device: str) -> torch.Tensor:
    """Contrastive outputs (N, CONTRAST_DIM) of the frozen network, no augmentation."""
    model = frozen_on(model, device)
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    return torch.cat([model.embed(to_model_input(pixels[batch]).to(device)).float().cpu() for batch in batches])


def classify(profile: Profile, model: ContrastiveAgglomerator, splits: dict, device: str) -> tuple[Learner, dict, dict]:
    """Phase 2: the classifier on the frozen contrastive output, trained on "fit" for profile.probe_epochs;
    returns the learner, accuracy on "holdout" (20% of train) and "val" (the val folder), and the history."""
    set_seed(profile.seed, reproducible=True)
    features = {name: (embeddings(model, px, idx, profile.batch_size, device), torch.as_tensor(labels[idx]))
                for name, (px, idx, labels) in splits.items()}
    return fit_head(profile, features, ClassifierHead(model.backbone.cfg.n_classes), device)


def frozen_random_classifier(profile: Profile, cfg: AgglomeratorConfig, splits: dict, device: str) -> tuple[Learner, dict, dict]:
    """Table 3's "None" row: a randomly initialised network of `cfg` (drawn from the profile's seed), frozen, and the
    classifier trained on its contrastive output for profile.probe_epochs, each training image a new RandAugment
    view; scored without augmentation on "holdout" and "val". Returns the learner, the accuracies and the history."""
    set_seed(profile.seed, reproducible=True)
    model = FrozenClassifier(ContrastiveAgglomerator(cfg))
    dls = loaders(AugmentedViews(*splits["fit"], n_views=1), AugmentedViews(*splits["holdout"], n_views=1),
                  profile.batch_size, device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=lion(profile.betas))
    announce(learn, profile.probe_epochs, f"classifier on a frozen random network, {cfg.image_size} px, RandAugment")
    history = fit(learn, profile, profile.probe_epochs)
    scores = {}
    for name in ("holdout", "val"):
        plain = AugmentedViews(*splits[name], n_views=1, augment=lambda image: image)  # no augmentation
        scores[name] = float(learn.validate(dl=DataLoader(plain, bs=profile.batch_size, device=device))[1])
    return learn, scores, history
