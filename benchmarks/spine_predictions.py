"""In-process predictions of benchmarks/real_spine.py: every configuration of one validation image
from one encoding.

A fold's model predicts each image as `sab_predict -f F` would (the same preprocessing,
`EnsemblePredictor` with sab_predict's batch size, prompts mapped by sab_predict's own
`slice_prompts_for_case`, labels mapped back onto the input's grid), but the image embeddings are
computed once per image and shared by all configurations that read it (automatic 2D and 3D, clicks
on every slice, carried clicks): with a pretrained TinyViT the encoder is most of the time (about
1.3 s per 256 px slice on two CPU cores), and one sab_predict call per configuration would encode
every image four times. The original images' embeddings come from the fold's own embedding cache
when it holds them for exactly this preprocessed image (checked), as sab_train's validation reads
them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sabnet.inference.model_folder import load_ensemble
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.prompt_coordinates import slice_prompts_for_case
from sabnet.io.atomic import read_json
from sabnet.io.image_io import read_image, write_image
from sabnet.model.case_predictor import CaseEmbeddings, EnsemblePredictor
from sabnet.planning.plans import Plan
from sabnet.preprocessing.inverse import probabilities_to_original
from sabnet.training.embedding_cache import CACHE_FOLDER, EmbeddingCache


@dataclass
class Configuration:
    """One prediction of an image: its output folder, mode, prompts ({'coordinates', 'prompts'} as
    in a prompts file, or None) and whether prompted objects are carried to neighbouring slices."""

    name: str
    mode: str = "2d"
    prompts: dict | None = None
    carry: bool = True


def fold_predictor(model_folder: Path, fold: int, device: str) -> tuple[Plan, EnsemblePredictor]:
    """A fold's model (checkpoint_final, with its depth branch) as sab_predict builds it."""
    plan, models, _ = load_ensemble(model_folder, [fold], "final", device, "3d")
    return plan, EnsemblePredictor(models, device, max(plan.training.batch_size, 4))


def cached_embeddings(preprocessed_dir: Path, predictor: EnsemblePredictor, case_id: str, image: np.ndarray
                      ) -> dict | None:
    """{encoder digest: (lookup, embeddings)} of `case_id` from the dataset's embedding cache, when
    one was filled by this predictor's frozen encoder and the stored preprocessed image equals
    `image`; None otherwise (the image is then encoded)."""
    stored_image = Path(preprocessed_dir) / "data" / case_id / "image.npy"
    if not stored_image.is_file():
        return None
    kept = np.load(stored_image, mmap_mode="r")
    if kept.shape != image.shape or not np.allclose(kept, image, atol=1e-5):
        return None
    for index_file in sorted((Path(preprocessed_dir) / CACHE_FOLDER).glob("*/cache.json")):
        index = read_json(index_file)
        if index.get("encoder") not in predictor.group_digests or case_id not in index.get("cases", {}):
            continue
        cache = EmbeddingCache(preprocessed_dir, index_file.parent.name, None)
        embeddings = cache.embeddings(case_id)
        if len(embeddings) == len(cache.tiles(case_id)):
            return {index["encoder"]: (cache.lookup(case_id), embeddings)}
    return None


def predict_configurations(plan: Plan, predictor: EnsemblePredictor, case_id: str, image_files: list[Path],
                           configurations: list[Configuration], outputs: dict[str, Path],
                           preprocessed_dir: Path | None = None) -> dict:
    """Predict one image in every configuration, writing outputs[name] (uint8 labels on the input's
    grid). Returns {'seconds': wall seconds, 'encoder_calls': encoder calls, 'cached': whether the
    embeddings came from the cache}."""
    started, calls = time.perf_counter(), predictor.encoder_calls
    channels, geometry = [], None
    for path in image_files:
        array, geometry = read_image(path)
        channels.append(array)
    pre = preprocess_for_prediction(channels, geometry, plan)
    stored = cached_embeddings(preprocessed_dir, predictor, case_id, pre.image) if preprocessed_dir else None
    shared = CaseEmbeddings(predictor, pre.image, keep_all=True, stored=stored)
    for c in configurations:
        prompts = None
        if c.prompts is not None:
            prompts = slice_prompts_for_case(c.prompts["prompts"], c.prompts.get("coordinates", "ijk"), geometry,
                                             pre.properties, plan.labels, f"{c.name} prompts of {case_id}")
        probabilities = predictor.predict(pre.image, pre.depth_image, pre.properties, c.mode, prompts,
                                          carry=c.carry, embeddings=shared)
        labels, _ = probabilities_to_original(probabilities, pre.properties, False)
        outputs[c.name].parent.mkdir(parents=True, exist_ok=True)
        write_image(labels.astype(np.uint8), geometry, outputs[c.name])
    return {"seconds": time.perf_counter() - started, "encoder_calls": predictor.encoder_calls - calls,
            "cached": stored is not None}
