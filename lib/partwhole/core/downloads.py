"""What the paper profile fetches from the internet, fetched and verified before anything runs.

- Imagenette 2, full size, through fastai's `untar_data(URLs.IMAGENETTE)` (or a folder given as dataset_path);
- the SAM checkpoint of the profile's `sam_model`, checked against the SHA-256 prefix in its official name;
- the timm weights of every embedder the profile uses (the mask embedder, the self-supervised control's), from
  the Hugging Face hub (cached in ~/.cache/huggingface).

Offline, each failure says what to fetch, how and where to put it; `preflight` collects them all before the
first notebook, so an offline run stops at once rather than hours in.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .artefacts import project_root, sha256

IMAGENETTE_URL_KEY = "IMAGENETTE"  # fastai's URLs.IMAGENETTE: full-size imagenette2, 1.5 GB
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}


def imagenette_root(path: str | None) -> Path:
    """Full-size Imagenette 2: the given folder, or fastai's copy (downloaded by untar_data if missing)."""
    if path is not None:
        root = Path(path).expanduser()
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise FileNotFoundError(f"{root} is not an Imagenette folder: expected {root}/train and {root}/val; "
                                    "set dataset_path to the folder that holds them")
        return root
    from fastai.data.external import URLs, untar_data

    url = getattr(URLs, IMAGENETTE_URL_KEY)
    try:
        return untar_data(url)
    except Exception as error:  # no internet (URLError, ConnectionError, ...) or a broken archive
        raise RuntimeError(
            f"Imagenette could not be downloaded ({type(error).__name__}: {error}).\n"
            f"Download {url} (1.5 GB), extract it, and pass its folder as dataset_path "
            "(e.g. --set dataset_path=/data/imagenette2), or run again with internet access."
        ) from error


def create_timm_model(name: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    """timm.create_model, with a message that says how to get hub weights when they cannot be fetched."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:  # offline: the hub download fails deep inside huggingface_hub
        local = kwargs.get("pretrained_cfg_overlay", {}).get("file")
        if local:
            raise RuntimeError(f"timm could not load the local weights {local} for {name!r} "
                               f"({type(error).__name__}: {error})") from error
        raise RuntimeError(
            f"timm could not build {name!r} with pretrained={pretrained} ({type(error).__name__}: {error}).\n"
            "Pretrained weights come from the Hugging Face hub: run once with internet access (they are cached in "
            "~/.cache/huggingface), or copy that cache here and set HF_HUB_OFFLINE=1."
        ) from error


@dataclass(frozen=True)
class SamCheckpoint:
    filename: str
    approx_size: str  # for dry runs and error messages; not checked

    @property
    def url(self) -> str:
        return f"https://dl.fbaipublicfiles.com/segment_anything/{self.filename}"

    @property
    def sha256_prefix(self) -> str:
        # torch.hub convention: the 6 hex digits after the last "_" start the file's SHA-256.
        return self.filename.rsplit("_", 1)[1].split(".", 1)[0]


SAM_CHECKPOINTS: dict[str, SamCheckpoint] = {
    "vit_h": SamCheckpoint("sam_vit_h_4b8939.pth", "2.56 GB"),
    "vit_l": SamCheckpoint("sam_vit_l_0b3195.pth", "1.25 GB"),
    "vit_b": SamCheckpoint("sam_vit_b_01ec64.pth", "375 MB"),
}


def checkpoint_spec(model_type: str) -> SamCheckpoint:
    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; valid: {sorted(SAM_CHECKPOINTS)}")
    return SAM_CHECKPOINTS[model_type]


def _fetch_instructions(spec: SamCheckpoint, directory: Path) -> str:
    return (
        f"expected file: {spec.filename} ({spec.approx_size}, SHA-256 starting {spec.sha256_prefix})\n"
        f"official URL:  {spec.url}\n"
        f"put it in:     {directory}\n"
        f"fetch it with: wget -P {directory} {spec.url}"
    )


def sam_checkpoint(model_type: str, directory: Path, download: bool = True) -> Path:
    """Path of a verified SAM checkpoint in ``directory``, downloading it if missing and allowed.

    A file is only returned if its SHA-256 starts with the prefix in its official name; a file with
    the wrong hash is refused, never used or overwritten.
    """
    spec = checkpoint_spec(model_type)
    directory = Path(directory)
    path = directory / spec.filename
    if path.exists():
        actual = sha256(path)[: len(spec.sha256_prefix)]
        if actual != spec.sha256_prefix:
            raise RuntimeError(
                f"SAM checkpoint {path} has SHA-256 starting {actual}, expected {spec.sha256_prefix}: "
                f"corrupt, truncated or a different file. Remove it and fetch the official one.\n"
                + _fetch_instructions(spec, directory)
            )
        return path
    if not download:
        raise FileNotFoundError(
            f"SAM checkpoint {path} not found (downloading disabled).\n" + _fetch_instructions(spec, directory)
        )

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{spec.filename}.{os.getpid()}.download"
    try:
        torch.hub.download_url_to_file(spec.url, str(tmp), hash_prefix=spec.sha256_prefix, progress=True)
        # Verify again before the final name exists, whatever did the download.
        actual = sha256(tmp)[: len(spec.sha256_prefix)]
        if actual != spec.sha256_prefix:
            raise RuntimeError(f"downloaded file has SHA-256 starting {actual}, expected {spec.sha256_prefix}")
        tmp.replace(path)
    except Exception as exc:  # no network, HTTP error, bad hash, full disk: one clear message
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download SAM checkpoint {spec.filename} ({type(exc).__name__}: {exc}).\n"
            + _fetch_instructions(spec, directory)
        ) from exc
    return path


def needed(profile) -> list[dict]:
    """What the profile needs from the internet: what, its size, and a function that fetches or finds it."""
    items = []
    if profile.dataset == "imagenette" and profile.dataset_path is None:
        items.append({"what": "Imagenette 2, full size (fastai URLs.IMAGENETTE)", "size": "1.5 GB",
                      "fetch": lambda: imagenette_root(None)})
    if profile.teacher == "sam" and not profile.random_weights and profile.sam_model != "tiny":
        spec = checkpoint_spec(profile.sam_model)
        items.append({"what": f"SAM {profile.sam_model} checkpoint {spec.filename} ({spec.url})",
                      "size": spec.approx_size,
                      "fetch": lambda: sam_checkpoint(profile.sam_model, project_root() / profile.sam_checkpoint_dir)})
    if not profile.random_weights:
        hub = [(profile.embedder, "")] if profile.embedder_pretrained else []
        if profile.control_embedder:
            hub.append((profile.control_embedder, ", for the self-supervised control (notebook 07)"))
        for name, purpose in hub:
            items.append({"what": f"timm weights {name} (Hugging Face hub){purpose}", "size": "tens of MB",
                          "fetch": lambda name=name: create_timm_model(name, True, num_classes=0)})
    return items


def preflight(profile) -> list[str]:
    """Fetch or find every download; returns the error messages of those that failed."""
    failures = []
    for item in needed(profile):
        try:
            item["fetch"]()
        except Exception as error:  # each failure carries its own instructions
            failures.append(f"- {item['what']} [{item['size']}]:\n  {error}")
    return failures
