"""Notebook 05's runs, each a function of a study, so that `Study.side_by_side` can train them side by side:
SupCon per configuration (Table 3), XResNet per size (Table 4), and the data-efficiency curve's runs on a labelled
share. Each full run writes its metrics file and prints its line; the curve's points are returned for notebook 05
to write as one file."""
import dataclasses
import time

from ..method.model import count_parameters
from ..method.train import probe_features
from ..study import efficiency
from ..study.results import accuracy_line, chance_margin, plateaued, training_line
from ..study.study import Study
from . import contrastive, xresnet


def supcon(study: Study, name: str) -> dict:
    """Table 3 for one configuration ("ours" or "original"): SupCon pretraining, its backbone saved (notebook 06
    measures its islands), the classifier on its frozen output; metrics `supcon-<name>`. For the original
    configuration also the "None" row first: the classifier on the frozen random network (`none-original`).
    Returns {"history": the pretraining's per-epoch losses, "accuracy"}."""
    P = study.profile
    cfg = contrastive.agglomerator_config(name, P)
    counts = contrastive.parameter_counts(cfg)
    splits = study.probe_splits(cfg.image_size)

    def record(run, accuracy, pretraining, epochs, steps, seconds, history):
        study.record(run, pretraining=pretraining, augmentation="RandAugment", paper_rows={"table3": pretraining},
                     accuracy=accuracy, cells={"parameters_m": f"{counts['total'] / 1e6:.3f}",
                                               "size_px": cfg.image_size},
                     parameters=counts, agglomerator=dataclasses.asdict(cfg), epochs=epochs, steps=steps,
                     wall_time_s=seconds, history=history)
        print(f"{run}: {accuracy_line(accuracy)}; {training_line(study.metrics(run))}")

    if name == "original":
        start = time.perf_counter()
        learn, accuracy, history = contrastive.frozen_random_classifier(P, cfg, splits, study.device)
        record("none-original", accuracy, "None", {"probe": P.probe_epochs},
               {"probe": P.probe_epochs * len(learn.dls.train)}, {"probe": round(time.perf_counter() - start, 1)},
               {"probe": history})
    start = time.perf_counter()
    learn, history = contrastive.pretrain(P, cfg, splits, study.device)
    pretrain_seconds = time.perf_counter() - start
    study.save_backbone(learn.model.backbone, f"supcon-{name}")
    start = time.perf_counter()
    classifier, accuracy, classifier_history = contrastive.classify(P, learn.model, splits, study.device)
    record(f"supcon-{name}", accuracy, "Supervised Contrastive Loss",
           {"pretrain": P.contrastive_epochs, "probe": P.probe_epochs},
           {"pretrain": P.contrastive_epochs * len(learn.dls.train), "probe": P.probe_epochs * len(classifier.dls.train)},
           {"pretrain": round(pretrain_seconds, 1), "probe": round(time.perf_counter() - start, 1)},
           {"pretrain": history, "probe": classifier_history})
    return {"history": history, "accuracy": accuracy}


def _xresnet_on(study: Study, index: int, fit_idx) -> tuple:
    """XResNet at the profile's `index`-th size from random weights on the `fit_idx` images of train: (learner,
    accuracy, history, seconds)."""
    P = study.profile
    start = time.perf_counter()
    learn, accuracy, history = xresnet.train(
        study.images("train"), fit_idx, study.holdout()[1], study.images("val"), P.xresnet_sizes[index],
        P.xresnet_batch_sizes[index], P.xresnet_epochs, P.seed, study.device, random_crop(index),
        P.xresnet_architecture, P.xresnet_widen, P.xresnet_wds[index], P.xresnet_normalize, P.xresnet_pool)
    return learn, accuracy, history, time.perf_counter() - start


def random_crop(index: int) -> bool:
    """Whether the entry at Table 4's `index`-th size cropped at random (the 128 px entry resized its images)."""
    return xresnet.PAPER_SIZES[index] != 128


def xresnet_run(study: Study, index: int) -> dict:
    """Table 4 at the profile's `index`-th size: the recipe from random weights on the fit images; metrics
    `<architecture>-<size>px`. Returns {"history", "accuracy"}."""
    P = study.profile
    size, paper_size = P.xresnet_sizes[index], xresnet.PAPER_SIZES[index]
    learn, accuracy, history, seconds = _xresnet_on(study, index, study.holdout()[0])
    run = f"{P.xresnet_architecture}-{size}px"
    parameters = count_parameters(learn.model)
    study.record(
        run,
        pretraining="None (random init)",
        augmentation=(f"RandomResizedCrop (min scale {xresnet.MIN_SCALE})" if random_crop(index) else "Resize")
        + ", flip",
        paper_rows={"table4": f"xresnet50 {paper_size}px"},
        accuracy=accuracy,
        cells={"parameters_m": f"{parameters / 1e6:.3f}", "size_px": size, "epochs": P.xresnet_epochs,
               "optimizer": "Ranger", "batch_size": P.xresnet_batch_sizes[index], "wd": P.xresnet_wds[index]},
        parameters={"total": parameters},
        architecture={"name": P.xresnet_architecture, "widen": P.xresnet_widen},
        epochs={"train": P.xresnet_epochs},
        steps={"train": P.xresnet_epochs * len(learn.dls.train)},
        wall_time_s={"train": round(seconds, 1)},
        history={"train": history},
    )
    print(f"{size} px: {accuracy_line(accuracy)}; {training_line(study.metrics(run))}")
    return {"history": history, "accuracy": accuracy}


def _point(study: Study, accuracy: dict, images: int, epochs: int, steps: int, seconds: float, history: dict) -> dict:
    val = study.images("val")
    at_chance = accuracy["val"] < chance_margin(len(val.classes), len(val))
    return {"val": accuracy["val"], "images": int(images), "epochs": epochs, "steps": steps,
            "seconds": round(seconds, 1), "plateaued": plateaued(history, at_chance)}


def labelled_subsets(study: Study) -> dict:
    """{share: its images of the fit set}, the same for every method (`efficiency.labelled_subsets`)."""
    P = study.profile
    return efficiency.labelled_subsets(study.holdout()[0], study.images("train").labels, P.label_fractions, P.seed)


def xresnet_on_share(study: Study, fraction: float) -> dict:
    """The curve's XResNet point at a labelled share: the recipe at the profile's last (largest) size from random
    weights on the subset, repeated to the fit set's length (`efficiency.repeated`: the same steps as on all)."""
    P = study.profile
    subset = labelled_subsets(study)[fraction]
    budget = efficiency.repeated(subset, len(study.holdout()[0]))
    learn, accuracy, history, seconds = _xresnet_on(study, len(P.xresnet_sizes) - 1, budget)
    return _point(study, accuracy, len(subset), P.xresnet_epochs, P.xresnet_epochs * len(learn.dls.train), seconds,
                  history)


def distillation_on_shares(study: Study) -> dict:
    """The curve's distillation points: notebook 03's student, pretrained without labels on every fit image, and
    its probe trained on each labelled share (repeated to the fit set's length). {fraction: point}."""
    P = study.profile
    fit_idx = study.holdout()[0]
    backbone = study.load_backbone(f"pretrained-{study.main_run}")
    features = study.probe_features(backbone)
    points = {}
    for fraction, subset in labelled_subsets(study).items():  # the subsets drawn once
        start = time.perf_counter()
        learn, accuracy, history = probe_features(
            P, efficiency.subset_features(features, fit_idx, efficiency.repeated(subset, len(fit_idx))),
            backbone.cfg.n_classes, study.device)
        points[fraction] = _point(study, accuracy, len(subset), P.probe_epochs, P.probe_epochs * len(learn.dls.train),
                                  time.perf_counter() - start, history)
    return points
