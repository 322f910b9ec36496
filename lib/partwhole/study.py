"""One profile's study, wired: dataset, image caches, teacher, embedder, targets, checkpoints and results.

The notebooks hold the prose and the plots; they reach every artefact through a `Study`, so that every
notebook of a profile reads and writes the same files, and the same code serves both profiles.
"""
import time
from functools import cached_property
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import paths
from .costs import announce
from .data import ImageSet, dataset_root, holdout_split, image_cache, list_images
from .embedder_training import train_embedder
from .model import Agglomerator, parameter_counts
from .profiles import Profile, get_profile
from .results import provenance, write_metrics
from .targets import CROP_MODES, MaskEmbedder, build_targets, load_targets, make_teacher, manifest
from .train import classifier, fit, load_checkpoint, pretraining_learner, probe, resolve_device, save_checkpoint


class Study:
    def __init__(self, profile: str = "embedded", overrides: dict | None = None, runs_dir=None, results_dir=None,
                 targets_dir=None):
        self.profile: Profile = get_profile(profile, **(overrides or {}))
        self.runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir(self.profile.name)
        self.results_dir = Path(results_dir) if results_dir else paths.results_dir(self.profile.name)
        # targets of another teacher or embedder (a control) live apart; image caches are shared
        self.targets_dir = Path(targets_dir) if targets_dir else self.runs_dir / "targets"
        self.device = resolve_device(self.profile.device)
        self._splits = {}

    # data
    @cached_property
    def root(self) -> Path:
        return dataset_root(self.profile)

    def images(self, split: str) -> ImageSet:
        """The split's images in a fixed order (without unreadable files, if the profile says to skip them)."""
        return self._split(split)[0]

    def pixels(self, split: str) -> np.ndarray:
        """uint8 (N, H, W, 3) images of a split at the profile's size, decoded once (memory-mapped cache)."""
        return self._split(split)[1]

    def _split(self, split: str):
        if split not in self._splits:
            listing = list_images(self.root, split)
            cache = self.runs_dir / "cache"
            self._splits[split] = image_cache(listing, self.profile.image_size, cache, self.profile.on_bad_image)
        return self._splits[split]

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        """(fit, holdout) indices into train: the reference's 20% validation split carved out of train."""
        return holdout_split(self.images("train").labels, self.profile.holdout_fraction, self.profile.seed)

    # teacher and targets
    @cached_property
    def teacher(self):
        return make_teacher(self.profile, self.device)

    @property
    def teacher_name(self) -> str:
        return {"sam": "SAM", "ground_truth": "ground-truth teacher"}.get(self.profile.teacher, self.profile.teacher)

    @cached_property
    def embedder(self) -> MaskEmbedder:
        checkpoint = None
        if self.profile.embedder_training_epochs > 0:  # trained here with labels first (or reused): see embedder_training
            train, val = (self.images("train"), self.pixels("train")), (self.images("val"), self.pixels("val"))
            checkpoint = train_embedder(self.profile, train, val, self.runs_dir / "checkpoints", self.device)
        return MaskEmbedder.from_profile(self.profile, self.device, checkpoint)

    def teacher_statistics(self, split: str, n_images: int | None = None) -> dict:
        """Over the first n images of a split: mean mask area per level (fraction of the image), how often the
        three masks of a point are nested (subpart within part within whole), and distinct masks per image."""
        images, pixels = self.images(split), self.pixels(split)
        n = len(images) if n_images is None else min(n_images, len(images))
        areas, nested, distinct = [], [], []
        for i in range(n):
            masks = self.teacher(np.asarray(pixels[i]), images.paths[i])  # (P, L, H, W) bool
            areas.append(masks.float().mean(dim=(2, 3)).mean(dim=0).numpy())
            inside = [(masks[:, l] & ~masks[:, l + 1]).flatten(1).any(dim=1) for l in range(masks.shape[1] - 1)]
            nested.append(1 - torch.stack(inside).any(dim=0).float().mean().item())
            distinct.append(len(masks.flatten(2).flatten(0, 1).unique(dim=0)))
        return {
            "images": n,
            "mean_area_per_level": np.mean(areas, axis=0).round(4).tolist(),
            "nested_fraction": float(np.mean(nested)),
            "distinct_masks_per_image": float(np.mean(distinct)),
            "masks_per_image": int(masks.shape[0] * masks.shape[1]),
        }

    def build_targets(self, split: str, crops=CROP_MODES) -> dict:
        images = self.images(split)
        return build_targets(
            self.profile, images, self.pixels(split), self.teacher, self.embedder, self.targets_dir, crops
        )

    def targets(self, split: str, crop: str | None = None) -> np.ndarray:
        """Stored targets (N, P, 3, D) for a split; refused if built for another dataset or configuration."""
        expected = manifest(
            self.profile, self.images(split), crop or self.profile.crop, self.embedder.dim, self.embedder.data_config
        )
        return load_targets(self.targets_dir, expected)

    # models and results
    def agglomerator_config(self):
        return self.profile.agglomerator_config(target_dim=self.embedder.dim)

    def checkpoint(self, name: str) -> Path:
        """Checkpoints are kept per seed, so that runs of several seeds share data and targets but not weights."""
        return self.runs_dir / "checkpoints" / f"seed_{self.profile.seed}" / f"{name}.pt"

    def save_backbone(self, backbone: Agglomerator, name: str) -> Path:
        path = self.checkpoint(name)
        save_checkpoint(backbone, backbone.cfg, path)
        return path

    def load_backbone(self, name: str) -> Agglomerator:
        cfg = self.agglomerator_config()
        return load_checkpoint(Agglomerator(cfg), cfg, self.checkpoint(name))

    def save_classifier(self, backbone: Agglomerator, head, name: str) -> Path:
        """The probed model in one file (frozen backbone + trained head), for inference."""
        path = self.checkpoint(name)
        save_checkpoint(classifier(backbone, head), backbone.cfg, path)
        return path

    def pretrain_and_probe(self, name: str, *, pretraining: str, paper_rows: dict, profile: Profile | None = None,
                           **fields) -> dict:
        """One distillation run, start to end: a cost estimate printed first, pretraining on this study's targets
        for `profile` (default: the study's; an ablation passes its own), resumable after every epoch, the probe
        on the frozen top level, the probed classifier saved, and the metrics file `pretrained-<name>` written.

        Returns {"backbone", "accuracy", "history", "probe_history", "metrics"}."""
        profile = profile or self.profile
        fit_idx, holdout_idx = self.holdout()
        start = time.perf_counter()
        learn = pretraining_learner(profile, self.pixels("train"), self.targets("train", profile.crop), fit_idx,
                                    holdout_idx, self.device)
        announce(learn, profile.pretrain_epochs, f"{name} pretraining")
        history = fit(learn, profile, profile.pretrain_epochs, self.checkpoint(f"pretraining-{name}-state"))
        pretrain_seconds = time.perf_counter() - start
        backbone = learn.model.backbone
        self.save_backbone(backbone, f"pretrained-{name}")
        start = time.perf_counter()
        probe_learn, accuracy, probe_history = probe(profile, backbone, self.probe_splits(), self.device)
        probe_seconds = time.perf_counter() - start
        print(f"{name}: pretraining {pretrain_seconds:.0f} s, probe {probe_seconds:.0f} s,",
              {k: f"{100 * v:.2f}%" for k, v in accuracy.items()})
        self.save_classifier(backbone, probe_learn.model, f"classifier-{name}")
        metrics = self.record(
            f"pretrained-{name}",
            profile=profile,
            pretraining=pretraining,
            paper_rows=paper_rows,
            accuracy=accuracy,
            epochs={"pretrain": profile.pretrain_epochs, "probe": profile.probe_epochs},
            wall_time_s={"pretrain": round(pretrain_seconds, 1), "probe": round(probe_seconds, 1)},
            history={"pretrain": history, "probe": probe_history},
            **fields,
        )
        return {"backbone": backbone, "accuracy": accuracy, "history": history, "probe_history": probe_history,
                "metrics": metrics}

    def probe_splits(self) -> dict:
        """Inputs of train.probe: the head fits on 80% of train, is scored on the other 20% and on val."""
        fit, holdout = self.holdout()
        train, val = self.images("train"), self.images("val")
        train_pixels = self.pixels("train")
        return {
            "fit": (train_pixels, fit, train.labels),
            "holdout": (train_pixels, holdout, train.labels),
            "val": (self.pixels("val"), np.arange(len(val)), val.labels),
        }

    def record(self, run: str, *, pretraining: str, paper_rows: dict, accuracy: dict, profile: Profile | None = None,
               augmentation: str = "None", cells: dict | None = None, **fields) -> Path:
        """Write a run's metrics file: its accuracies, provenance, measured parameter count, and its cells in the
        paper's tables (`paper_rows` maps a table to the paper row this run stands beside, see results.paper_table).

        `profile` is the run's own settings when they differ from the study's (an ablation); `cells` overrides
        the cells derived from it (a baseline that is not an Agglomerator)."""
        profile = profile or self.profile
        parameters = parameter_counts(profile.agglomerator_config(target_dim=self.embedder.dim))
        derived = {
            "mask_strategy": "without cropping" if profile.crop == "none" else "with cropping",
            "encoder": "Included" if profile.levels_encoder else "Removed",
            "parameters_m": f"{parameters['total'] / 1e6:.3f}",
            "pretraining": pretraining,
            "augmentation": augmentation,
            "size_px": profile.image_size,
            "epochs": profile.probe_epochs,
            "optimizer": "Lion",
            "batch_size": profile.batch_size,
        }
        record = provenance(profile, self.device) | {
            "parameters": parameters,
            "accuracy": accuracy,
            "paper_rows": paper_rows,
            "cells": derived | (cells or {}),
        }
        return write_metrics(self.results_dir, run, record | fields)

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        path = self.results_dir / "figures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        return path
