"""One profile's study, wired: dataset, image caches, teacher, embedder, targets, checkpoints and results.

The notebooks hold the prose and the plots; they reach every artefact through a `Study`, so that every
notebook of a profile reads and writes the same files, and the same code serves every profile.
"""
import dataclasses
import time
from functools import cached_property
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..core import artefacts, workers
from ..core.devices import resolve_device
from ..core.timing import announce
from ..datasets.data import (COMPANION_SUFFIXES, ImageSet, check_class_count, dataset_root, holdout_split, image_cache,
                             list_images)
from ..method.embedder import CROP_MODES, MaskEmbedder
from ..method.model import Agglomerator, parameter_counts
from ..method.targets import build_targets, load_targets, manifest
from ..method.teachers import make_teacher, teacher_masks
from ..method.train import (classifier, extract_features, fit, held_out_mse, load_checkpoint,
                            mean_target_mse, pretraining_learner, probe_features, save_checkpoint)
from .profiles import PAPER, Profile, SettingsError, get_profile, overrides_from, settings_key
from .results import accuracy_line, chance_margin, provenance, training, write_metrics


def distillation_run(profile: Profile) -> str:
    """A distillation run's name, from the settings it varies: crop_none, crop_bbox, crop_none-levels_encoder,
    crop_none-level_weights_1_1_1 (weights other than the paper's); its metrics file is pretrained-<name>, its
    checkpoints pretrained-<name> and classifier-<name>."""
    name = f"crop_{profile.crop}" + ("-levels_encoder" if profile.levels_encoder else "")
    if tuple(profile.level_weights) != PAPER.level_weights:
        name += "-level_weights_" + "_".join(f"{w:g}" for w in profile.level_weights)
    return name


def _call_on_study(arguments: tuple, function, kwargs: dict):
    return function(Study(*arguments), **kwargs)


class Study:
    def __init__(self, profile: str = "embedded", overrides: dict | str | None = None, runs_dir=None, results_dir=None,
                 targets_dir=None):
        if not isinstance(profile, str):
            raise SettingsError(f"profile={profile!r}: profile takes a profile's name (embedded, paper, rehearsal)")
        self.profile: Profile = get_profile(profile, **overrides_from(overrides))
        self.runs_dir = Path(runs_dir) if runs_dir else artefacts.runs_dir(self.profile.name)
        self.results_dir = Path(results_dir) if results_dir else artefacts.results_dir(self.profile.name)
        # targets of other data, teacher or embedder (another dataset_seed, a control) live beside each other
        self.targets_dir = Path(targets_dir) if targets_dir else self.targets_folder(self.profile)
        self.device = resolve_device(self.profile.device)
        self._splits = {}
        # what it was made from: a worker of `side_by_side` makes its own Study alike
        self.arguments = (profile, overrides, runs_dir, results_dir, targets_dir)

    def targets_folder(self, profile: Profile) -> Path:
        """Where the targets of `profile` live: a folder keyed on the settings that reach them."""
        return self.runs_dir / "targets" / settings_key(profile.targets_settings())

    def side_by_side(self, calls: list) -> list:
        """Independent runs of this study side by side (`workers.side_by_side`: one process per CPU core, one thread
        each; one after another on a GPU), each `(function, keyword arguments)` with a function of a study, such as
        `Study.pretrain_and_probe`, called on a Study made like this one. Returns their results in order."""
        with self.exclusive(f"{len(calls)} runs side by side"):  # the workers share this lock
            return workers.side_by_side([(_call_on_study, (self.arguments, function, kwargs), {})
                                         for function, kwargs in calls], workers.worker_count(self.device))

    def exclusive(self, what: str):
        """A block during which no other run may write in this study's runs folder (artefacts.exclusive): building
        caches and targets, generating scenes, pretraining."""
        return artefacts.exclusive(self.runs_dir, what)

    # data
    @cached_property
    def root(self) -> Path:
        with self.exclusive("finding or generating the dataset"):
            return dataset_root(self.profile)

    def images(self, split: str) -> ImageSet:
        """The split's images in a fixed order (without unreadable files, if the profile says to skip them)."""
        return self._split(split, self.profile.image_size)[0]

    def pixels(self, split: str, size: int | None = None) -> np.ndarray:
        """uint8 (N, size, size, 3) images of a split, at the profile's size by default, decoded once (memory-mapped
        cache)."""
        return self._split(split, size or self.profile.image_size)[1]

    def _split(self, split: str, size: int):
        if (split, size) not in self._splits:
            classes = None if split == "train" else self.images("train").classes  # labels must mean the same
            listing = list_images(self.root, split, classes, COMPANION_SUFFIXES[self.profile.dataset])
            check_class_count(listing, self.profile.agglomerator_config(target_dim=1).n_classes)
            cache = self.runs_dir / "cache" / self.root.name  # one per dataset: another dataset_seed's stays
            with self.exclusive(f"decoding the {split} images"):
                self._splits[split, size] = image_cache(listing, size, cache, self.profile.on_bad_image)
        return self._splits[split, size]

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
        return MaskEmbedder.from_profile(self.profile, self.device)

    def teacher_statistics(self, split: str, n_images: int | None = None) -> dict:
        """Over the first n images of a split: mean mask area per level (fraction of the image), the share of points
        whose level-0 and level-2 masks differ (levels that mean something), how often the three masks of a point
        are nested (subpart within part within whole), and distinct masks per image."""
        images, pixels = self.images(split), self.pixels(split)
        n = len(images) if n_images is None else min(n_images, len(images))
        areas, differ, nested, distinct = [], [], [], []
        for first in range(0, n, self.profile.teacher_images):
            batch = slice(first, min(first + self.profile.teacher_images, n))
            for masks in teacher_masks(self.teacher, np.array(pixels[batch]), images.paths[batch]).cpu():
                areas.append(masks.float().mean(dim=(2, 3)).mean(dim=0).numpy())  # masks: (P, L, H, W)
                differ.append((masks[:, 0] != masks[:, -1]).flatten(1).any(dim=1).float().mean().item())
                inside = [(masks[:, l] & ~masks[:, l + 1]).flatten(1).any(dim=1) for l in range(masks.shape[1] - 1)]
                nested.append(1 - torch.stack(inside).any(dim=0).float().mean().item())
                distinct.append(len(masks.flatten(2).flatten(0, 1).unique(dim=0)))
        return {
            "images": n,
            "mean_area_per_level": np.mean(areas, axis=0).round(4).tolist(),
            "levels_0_and_2_differ": round(float(np.mean(differ)), 4),
            "nested_fraction": round(float(np.mean(nested)), 4),
            "distinct_masks_per_image": float(np.mean(distinct)),
            "masks_per_image": int(masks.shape[0] * masks.shape[1]),
        }

    def build_targets(self, split: str, crops=CROP_MODES) -> dict:
        images = self.images(split)
        with self.exclusive(f"building the {split} targets"):
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
        """Checkpoints are kept per seed and per the other settings that reach the pretraining (data, targets, model,
        optimisation): a run of other settings trains beside them; one differing only in the probe's or the baselines'
        settings finds its pretraining done."""
        key = settings_key(dataclasses.replace(self.profile, seed=0).pretraining_settings())
        return self.runs_dir / "checkpoints" / f"seed_{self.profile.seed}-{key}" / f"{name}.pt"

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

    def pretrain_and_probe(self, *, pretraining: str, paper_rows: dict, profile: Profile | None = None,
                           name: str | None = None, short_probe: bool = False, **fields) -> dict:
        """One distillation run, start to end: a cost estimate printed first, pretraining on this study's targets
        for `profile` (default: the study's; an ablation passes its own), resumable after every epoch, the probe
        on the frozen top level, the probed classifier saved, and the metrics file `pretrained-<name>` written
        (`name`: distillation_run(profile) by default). With `short_probe`, the same probe is also trained for
        profile.probe_epochs_short epochs (Table 4's shorter row): metrics `pretrained-<name>-probe_<k>ep`.

        Returns {"backbone", "accuracy", "history", "probe_history", "metrics"}."""
        profile = profile or self.profile
        name = name or distillation_run(profile)
        fit_idx, holdout_idx = self.holdout()
        start = time.perf_counter()
        learn = pretraining_learner(profile, self.pixels("train"), self.targets("train", profile.crop), fit_idx,
                                    holdout_idx, self.device)
        announce(learn, profile.pretrain_epochs, f"{name} pretraining")
        with self.exclusive(f"pretraining {name}"):
            history = fit(learn, profile, profile.pretrain_epochs, self.checkpoint(f"pretraining-{name}-state"))
        pretrain_seconds = time.perf_counter() - start
        held_out = {"student": held_out_mse(learn.model, learn.dls.valid), "weights": list(profile.level_weights),
                    "mean_target": mean_target_mse(self.targets("train", profile.crop), fit_idx, holdout_idx)}
        backbone = learn.model.backbone
        self.save_backbone(backbone, f"pretrained-{name}")
        features = self.probe_features(backbone)
        probes = [profile] + ([dataclasses.replace(profile, probe_epochs=profile.probe_epochs_short)] if short_probe
                              else [])
        for probe_profile in probes:
            start = time.perf_counter()
            probe_learn, accuracy, probe_history = probe_features(probe_profile, features, backbone.cfg.n_classes,
                                                                  self.device)
            probe_seconds = time.perf_counter() - start
            short = probe_profile is not profile
            run = f"pretrained-{name}" + (f"-probe_{probe_profile.probe_epochs}ep" if short else "")
            print(f"{run}: pretraining {pretrain_seconds:.0f} s, probe {probe_seconds:.0f} s, {accuracy_line(accuracy)}")
            if not short:
                self.save_classifier(backbone, probe_learn.model, f"classifier-{name}")
                result = {"backbone": backbone, "accuracy": accuracy, "history": history,
                          "probe_history": probe_history}
            result[f"metrics_{probe_profile.probe_epochs}ep" if short else "metrics"] = self.record(
                run,
                profile=probe_profile,
                pretraining=pretraining,
                paper_rows={"table4": "ours 5 epochs"} if short else paper_rows,
                accuracy=accuracy,
                epochs={"pretrain": profile.pretrain_epochs, "probe": probe_profile.probe_epochs},
                wall_time_s={"pretrain": round(pretrain_seconds, 1), "probe": round(probe_seconds, 1)},
                history={"pretrain": history, "probe": probe_history},
                held_out_mse=held_out,
                **fields,
            )
        return result

    def probe(self, backbone: Agglomerator, profile: Profile | None = None) -> tuple:
        """The probe on a frozen backbone's top level: (learner, {"holdout", "val"} accuracies, history)."""
        return probe_features(profile or self.profile, self.probe_features(backbone), backbone.cfg.n_classes,
                              self.device)

    def probe_features(self, backbone: Agglomerator) -> dict:
        """{split: (top-level features (N, columns, dim), labels)} of a frozen backbone for the probe's splits."""
        return {name: (extract_features(backbone, px, idx, self.profile.batch_size, self.device),
                       torch.as_tensor(labels[idx])) for name, (px, idx, labels) in self.probe_splits().items()}

    @property
    def caption(self) -> str:
        """One line for the top of every notebook: the profile, the device, and what its numbers can mean."""
        line = f"profile {self.profile.name} on {self.device}"
        if self.profile.random_weights:
            line += ": random weights, so these numbers measure nothing; they show that the paper profile's path runs"
        return line

    @property
    def main_run(self) -> str:
        """The name of the study's main distillation run (notebook 03)."""
        return distillation_run(self.profile)

    def metrics(self, run: str) -> dict:
        """A run's metrics file, written by the notebook that made the run."""
        path = self.results_dir / "metrics" / f"{run}.json"
        if not path.exists():
            raise FileNotFoundError(f"no metrics file {path}: run the notebook that makes the run {run!r} first")
        return artefacts.read_json(path, "metrics file", "Run the notebook that writes it again.")

    def probe_splits(self, size: int | None = None) -> dict:
        """{split: (pixels, indices, labels)}: a probe fits on "fit" (80% of train) and is scored on "holdout" (the
        other 20%) and on "val" (the val folder); pixels at `size` (default the profile's)."""
        fit, holdout = self.holdout()
        train, val = self.images("train"), self.images("val")
        train_pixels = self.pixels("train", size)
        return {
            "fit": (train_pixels, fit, train.labels),
            "holdout": (train_pixels, holdout, train.labels),
            "val": (self.pixels("val", size), np.arange(len(val)), val.labels),
        }

    def record(self, run: str, *, pretraining: str, paper_rows: dict, accuracy: dict, profile: Profile | None = None,
               augmentation: str = "None", cells: dict | None = None, **fields) -> Path:
        """Write a run's metrics file: its accuracies, provenance, measured parameter count, and its cells in the
        paper's tables (`paper_rows` maps a table to the paper row this run stands beside, see results.paper_table).

        `profile` is the run's own settings when they differ from the study's (an ablation); `cells` overrides
        the cells derived from it (a baseline that is not an Agglomerator). A run with a per-phase `history` also
        gets `training`: epochs, optimiser steps (`steps` per phase, by default epochs x the batches of the 80% fit
        set), seconds and the plateau verdict of each phase (results.training)."""
        profile = profile or self.profile
        val = self.images("val")
        if "history" in fields:
            phases = fields["history"]
            steps = fields.pop("steps", None) or {
                phase: fields["epochs"][phase] * max(1, len(self.holdout()[0]) // profile.batch_size) for phase in phases}
            at_chance = accuracy["val"] < chance_margin(len(val.classes), len(val))
            fields["training"] = training({p: fields["epochs"][p] for p in phases}, steps,
                                          {p: fields["wall_time_s"][p] for p in phases}, phases, at_chance)
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
            "classes": val.classes,  # the order of accuracy["val_by_class"]
            "paper_rows": paper_rows,
            "cells": derived | (cells or {}),
        }
        return write_metrics(self.results_dir, run, record | fields)

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        path = self.results_dir / "figures" / f"{name}.png"
        with artefacts.atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        return path
