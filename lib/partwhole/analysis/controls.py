"""Controls: what the distilled student's accuracy owes to each ingredient of its targets.

Each control takes one ingredient away from the targets and reruns the same pretraining and probe as the main
run (same data, splits, student, epochs and seed), so its accuracy beside the main run's says what that
ingredient was worth:

- random_embedder: the embedder's training (ImageNet labels for MaxViT-pico; the train labels for the embedded
  profile's embedder): the same architecture with random weights embeds the same masks.
- no_masks: the teacher's masks: every patch and level gets the embedding of the whole, unmasked image.
- shuffled_masks: the masks' fit to the image: image i is cut with the masks of another image of its split.
- self_supervised_embedder: the labels behind the embedder: a self-supervised embedder (the profile's
  `control_embedder`, DINO's ViT-S/16 in the paper profile) embeds the masks. Its 384-d targets need the levels
  encoder (the student's columns are 256-d and must divide into 16 x 16 px patches), so it is compared with the
  main run with the levels encoder included (Table 2's "Included").
- teacher_ceiling: the student itself: the probe on the embedder's own features of the whole image. Not a
  distillation run: it shows how much of the classes the targets could carry at most.
- bag_of_parts: the parts' arrangement: the probe on the subpart targets of masks cropped to their box
  (crop=bbox) averaged over the image's points, which say which parts an image holds but not where. Not a
  distillation run either.
- positional_bag_of_parts: the same average of the full-frame (crop=none) subpart targets: each of those still
  shows where its subpart lies in the image, so this bag keeps the parts' positions.

Each control's targets live in their own folder (runs/<profile>/targets/<settings key>/control_<name>); image caches are shared,
and so are the teacher's masks where the main run kept them (profile.mask_cache): SAM does not run again.
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..method.model import count_parameters
from ..method.targets import CachedMasks, build_targets
from ..method.teachers import make_teacher, teacher_masks
from ..method.train import probe_features
from ..study.profiles import get_profile, overrides_from
from ..study.results import accuracy_cells, markdown_table, replicates, source_of
from ..study.study import Study, distillation_run


class WholeImageTeacher:
    """Every point's mask, at every level, is the whole image: the targets become the whole image's embedding."""

    def __init__(self, image_size: int, grid: int, levels: int = 3):
        self.shape = (grid * grid, levels, image_size, image_size)

    def __call__(self, image: np.ndarray, path=None) -> torch.Tensor:
        return torch.ones(self.shape, dtype=torch.bool)


class ShuffledMasks:
    """Another image's masks: image i of a split gets the teacher's masks of image `source[i]` of that split
    (read from the mask cache, or through a SAM teacher's fast path, one image at a time).

    `source` is a fixed derangement drawn from `seed` (the images in a random cycle, each taking the next one's
    masks), so no image keeps its own masks and every image's masks are used exactly once."""

    def __init__(self, teacher, images, pixels, seed: int):
        self.teacher, self.images, self.pixels = teacher, images, pixels
        order = np.random.default_rng(seed).permutation(len(images))
        self.source = np.empty(len(images), dtype=np.int64)
        self.source[order] = np.roll(order, -1)
        self.index = {str(path): i for i, path in enumerate(images.paths)}

    def __call__(self, image: np.ndarray, path) -> torch.Tensor:
        if str(path) not in self.index:
            raise KeyError(f"{path} is not an image of the {self.images.split} split these masks are shuffled over")
        j = self.source[self.index[str(path)]]
        if isinstance(self.teacher, CachedMasks):
            return self.teacher.masks(j)
        return teacher_masks(self.teacher, np.array(self.pixels[j : j + 1]), self.images.paths[j : j + 1])[0]


@dataclass(frozen=True)
class Control:
    name: str
    removes: str  # what the control takes away, as the table says it
    overrides: dict = field(default_factory=dict)  # profile fields of the control's run
    teacher: str | None = None  # "whole_image" or "shuffled"; None: the profile's teacher
    self_supervised: bool = False  # embeds with the profile's control_embedder: runs where the profile has one

    def settings(self, profile) -> dict:
        """The control's profile overrides (the self-supervised embedder is the profile's)."""
        if not self.self_supervised:
            return self.overrides
        return self.overrides | {"embedder": profile.control_embedder, "embedder_pretrained": True,
                                 "embedder_weights": None, "embedder_kwargs": {}, "embedder_data_config": {}}


CONTROLS = (
    Control("random_embedder", "the embedder's training: same architecture, random weights",
            {"embedder_pretrained": False, "embedder_weights": None}),
    Control("no_masks", "the masks: every patch and level gets the whole, unmasked image's embedding",
            teacher="whole_image"),
    Control("shuffled_masks", "the masks' fit to the image: each image is cut with another image's masks",
            teacher="shuffled"),
    Control("self_supervised_embedder",
            "the labels behind the embedder: a self-supervised embedder (DINO ViT-S/16), with the levels encoder",
            {"levels_encoder": True}, self_supervised=True),
)
# Probes on fixed features, no student: what the targets can give a probe at most, and without their arrangement
TEACHER_CEILING = "teacher_ceiling"
BAG_OF_PARTS, POSITIONAL_BAG_OF_PARTS = "bag_of_parts", "positional_bag_of_parts"
BAG_CROP = {BAG_OF_PARTS: "bbox", POSITIONAL_BAG_OF_PARTS: "none"}  # box crops drop the position, full frames keep it
PROBE_ONLY = {
    TEACHER_CEILING: "the student: a probe on the embedder's own whole-image features",
    BAG_OF_PARTS: "the parts' arrangement: a probe on the box-cropped subpart targets averaged over the image's points",
    POSITIONAL_BAG_OF_PARTS: "the parts' arrangement but not their positions: a probe on the full-frame subpart "
                             "targets averaged over the image's points",
}


def can_run(control: Control, profile) -> bool:
    """The self-supervised control runs only in a profile that names a self-supervised embedder (not offline)."""
    return not control.self_supervised or profile.control_embedder is not None


def reference_run(control: Control, profile) -> str:
    """The run a control is compared with: the main run, with the levels encoder if the control uses it."""
    return "pretrained-" + distillation_run(dataclasses.replace(profile, **control.settings(profile)))


class ControlStudy(Study):
    """The study with one control's profile overrides and teacher; its targets are kept in their own folder."""

    def __init__(self, control: Control, profile: str = "embedded", overrides: dict | None = None, runs_dir=None,
                 results_dir=None):
        base = get_profile(profile, **overrides_from(overrides))
        super().__init__(profile, overrides_from(overrides) | control.settings(base), runs_dir=runs_dir,
                         results_dir=results_dir)
        self.control = control
        self.targets_dir = self.targets_folder(self.profile) / f"control_{control.name}"
        self.main_targets_dir = self.targets_folder(base)  # where the main run keeps the teacher's masks

    def teacher_for(self, split: str):
        """The control's teacher of a split: the whole image, or the profile's teacher's masks (read from the main
        run's mask cache when it holds them all), shuffled between images for shuffled_masks."""
        images, pixels = self.images(split), self.pixels(split)
        if self.control.teacher == "whole_image":
            return WholeImageTeacher(self.profile.image_size, self.profile.grid, self.profile.levels)
        if CachedMasks.available(self.main_targets_dir, self.profile, images):
            teacher = CachedMasks(self.main_targets_dir, self.profile, images)
        else:
            teacher = make_teacher(self.profile, self.device)
        if self.control.teacher == "shuffled":
            teacher = ShuffledMasks(teacher, images, pixels, self.profile.seed)
        return teacher

    def build_targets(self, split: str, crops=None) -> dict:
        """The control's targets of one split, for the profile's mask strategy only (what pretraining uses)."""
        images, pixels = self.images(split), self.pixels(split)
        teacher = self.teacher_for(split)
        with self.exclusive(f"building the control's {split} targets"):
            return build_targets(dataclasses.replace(self.profile, mask_cache=False), images, pixels, teacher,
                                 self.embedder, self.targets_dir, crops or (self.profile.crop,))

    def run(self) -> dict:
        """Targets of the train split, then pretraining and probe as the main run: metrics file
        `pretrained-control-<name>`. Returns Study.pretrain_and_probe's result."""
        self.build_targets("train")
        return self.pretrain_and_probe(
            name=f"control-{self.control.name}",
            pretraining=f"control: {self.control.name}",
            paper_rows={},
            control=self.control.name,
            removes=self.control.removes,
            reference=reference_run(self.control, self.profile),
        )


def run_control(study: Study, control: Control) -> dict:
    """One distillation control of `study` (made with its profile, overrides and folders), its targets built first;
    prints its seconds. A function of a study, so that `Study.side_by_side` can run the controls side by side."""
    start = time.perf_counter()
    result = ControlStudy(control, *study.arguments[:4]).run()
    print(f"{control.name}: {time.perf_counter() - start:.0f} s with its targets\n")
    return result


@torch.inference_mode()
def whole_image_features(embedder, pixels, indices, batch_size: int = 256) -> torch.Tensor:
    """The embedder's features (N, 1, D) of whole images (its own eval transform), as one column for the probe."""
    chunks = [embedder([Image.fromarray(np.asarray(pixels[i])) for i in indices[start : start + batch_size]])
              for start in range(0, len(indices), batch_size)]
    return torch.cat(chunks)[:, None]


def teacher_ceiling(study: Study) -> dict:
    """The main run's probe on the embedder's whole-image features instead of a student's top level: metrics file
    `control-teacher_ceiling`. Returns {"accuracy", "history", "metrics"}."""
    start = time.perf_counter()
    features = {name: (whole_image_features(study.embedder, px, idx), torch.as_tensor(labels[idx]))
                for name, (px, idx, labels) in study.probe_splits().items()}
    return _probe_only(study, TEACHER_CEILING, features, time.perf_counter() - start,
                       f"none: the embedder {study.profile.embedder}'s features", count_parameters(study.embedder.model))


def bag_of_parts(study: Study, control: str = BAG_OF_PARTS) -> dict:
    """The main run's probe on the level-0 (subpart) targets of each image averaged over its points: metrics file
    `control-<control>`. BAG_OF_PARTS averages the targets of box-cropped masks (crop=bbox): which parts an image
    holds, not where, so classes made of the same parts (notebook 01's pairs) are told apart by nothing but chance.
    POSITIONAL_BAG_OF_PARTS averages the full-frame (crop=none) targets, whose masked images still show where each
    subpart lies. Both read the study's shared targets. Returns {"accuracy", "history", "metrics"}."""
    crop = BAG_CROP[control]
    start = time.perf_counter()
    splits = {"fit": "train", "holdout": "train", "val": "val"}
    features = {}
    for name, (_, idx, labels) in study.probe_splits().items():
        subparts = np.asarray(study.targets(splits[name], crop)[idx][:, :, 0], dtype=np.float32)
        features[name] = (torch.from_numpy(subparts.mean(axis=1, keepdims=True)), torch.as_tensor(labels[idx]))
    return _probe_only(study, control, features, time.perf_counter() - start,
                       f"none: the mean of the subpart targets (crop {crop})", 0)


def _probe_only(study: Study, control: str, features: dict, features_seconds: float, pretraining: str,
                frozen_parameters: int) -> dict:
    """The main run's probe on fixed features, recorded as the control `control`."""
    start = time.perf_counter()
    learn, accuracy, history = probe_features(study.profile, features, len(study.images("train").classes),
                                              study.device)
    head = count_parameters(learn.model)
    metrics = study.record(
        f"control-{control}",
        pretraining=pretraining,
        paper_rows={},
        accuracy=accuracy,
        control=control,
        removes=PROBE_ONLY[control],
        reference="pretrained-" + distillation_run(study.profile),
        parameters={"frozen": frozen_parameters, "head": head, "total": frozen_parameters + head},
        epochs={"pretrain": 0, "probe": study.profile.probe_epochs},
        wall_time_s={"features": round(features_seconds, 1), "probe": round(time.perf_counter() - start, 1)},
        history={"probe": history},
    )
    return {"accuracy": accuracy, "history": history, "metrics": metrics}


def controls_table(metrics: dict[str, dict]) -> str:
    """The controls in the paper's table style: the runs they are compared with, then one row per control (a
    control without a metrics file says why it has none); the repeats of a run over seeds are pooled.
    metrics: results.read_metrics(...)."""
    runs = {records[0]["run"]: records for records in replicates(metrics)}
    controls = {records[0]["control"]: records for records in runs.values() if "control" in records[0]}
    references = list(dict.fromkeys(records[0]["reference"] for records in controls.values()))
    profile = next((runs[run][0]["profile"] for run in references if run in runs), "this")
    rows = []
    for run in references:
        if run in runs:
            records = runs[run]
            rows.append([f"reference: {records[0]['cells']['pretraining']} ({run})", "nothing",
                         *accuracy_cells(records), source_of(*records)])
    for name, removes in [(c.name, c.removes) for c in CONTROLS] + list(PROBE_ONLY.items()):
        records = controls.get(name)
        if records is None:
            control = next((c for c in CONTROLS if c.name == name), None)
            why = "it names no self-supervised embedder" if control and control.self_supervised else "no metrics file"
            rows.append([name, removes, "", "", f"not run in the {profile} profile: {why}"])
        else:
            rows.append([name, removes, *accuracy_cells(records), source_of(*records)])
    header = ["Control", "What it removes", "Accuracy, val folder", "Accuracy, 20% of train", "Source"]
    return "**Controls: what the targets owe to each ingredient**\n\n" + markdown_table(header, rows)
