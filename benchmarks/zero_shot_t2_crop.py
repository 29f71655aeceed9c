"""Zero-shot prompting on the only real T2 ground truth here: the T2-weighted cervical crop of
`../shared/data/spine_tptbox_mri` (68 x 52 x 67 at 1.5 mm, C5-C7; vertebral body = subregion 49
within each vertebra's instance mask), with LiteMedSAM's packaged weights and no training, the same
three prompt configurations as benchmarks/zero_shot_spine.py (a box per vertebra on every slice;
one box on its middle slice, carried, beside the stop-22 carrying rules; one point, carried). A trained automatic model's figure on
the same crop is in docs/benchmarks.md (stop 22: 0.06 merged).

    python benchmarks/zero_shot_t2_crop.py [--data ../shared/data/spine_tptbox_mri] [--out DIR]

Writes <out>/zero_shot_t2_crop.csv and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero_shot_spine import CONFIGURATIONS, configuration_rules, dice, vertebra_prompts  # noqa: E402

from sabnet.inference.predict_image import preprocess_for_prediction  # noqa: E402
from sabnet.inference.prompt_coordinates import slice_prompts_for_case  # noqa: E402
from sabnet.inference.zero_shot import zero_shot_model, zero_shot_plan  # noqa: E402
from sabnet.io.image_io import read_image  # noqa: E402
from sabnet.model.case_predictor import (ZERO_SHOT_CARRY, ZERO_SHOT_OBJECT_THRESHOLD, CaseEmbeddings,  # noqa: E402
                                         EnsemblePredictor)
from sabnet.preprocessing.inverse import probabilities_to_original  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine_tptbox_mri"
VERTEBRAE = {"C5": 5, "C6": 6, "C7": 7}
BODY_SUBREGIONS = (49, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/zero_shot_t2_crop"))
    args = parser.parse_args()
    image_file = args.data / "sub-mri_label-6_T2w.nii.gz"
    if not image_file.is_file():
        sys.exit(f"{image_file}: not found; give --data")
    torch.set_num_threads(2)
    image, geometry = read_image(image_file)
    vertebra, _ = read_image(args.data / "sub-mri_seg-vert_label-6_msk.nii.gz")
    subregion, _ = read_image(args.data / "sub-mri_seg-subreg_label-6_msk.nii.gz")
    labels = np.where(np.isin(subregion, BODY_SUBREGIONS), vertebra, 0)
    table = {"background": 0, **{n: i + 1 for i, n in enumerate(VERTEBRAE)}}
    predictor = EnsemblePredictor([zero_shot_model(len(VERTEBRAE))], "cpu", 4, automatic=False,
                                  carry_rules=ZERO_SHOT_CARRY, object_threshold=ZERO_SHOT_OBJECT_THRESHOLD,
                                  point_boxes=True)
    plan = zero_shot_plan(geometry, len(VERTEBRAE))
    pre = preprocess_for_prediction([image], geometry, plan)
    prompts = vertebra_prompts(labels, pre.properties["slice_frame"]["axes"][0], VERTEBRAE)
    shared = CaseEmbeddings(predictor, pre.image, keep_all=True)
    rows = []
    for configuration in CONFIGURATIONS:
        t0 = time.perf_counter()
        kind, predictor.carry_rules = configuration_rules(configuration, ZERO_SHOT_CARRY)
        slice_prompts = slice_prompts_for_case(prompts[kind], "ijk", geometry, pre.properties, table, "t2")
        probabilities = predictor.predict(pre.image, pre.depth_image, pre.properties, "2d", slice_prompts,
                                          carry=configuration != "boxes", embeddings=shared)
        predicted, _ = probabilities_to_original(probabilities, pre.properties)
        row = {"configuration": configuration, "merged": dice(predicted > 0, labels > 0),
               **{n: dice(predicted == table[n], labels == v) for n, v in VERTEBRAE.items()},
               "seconds": time.perf_counter() - t0}
        row["mean per vertebra"] = float(np.nanmean([row[n] for n in VERTEBRAE]))
        rows.append(row)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "zero_shot_t2_crop.csv", index=False, float_format="%.4f")
    print(f"slice axis {pre.properties['slicing']}, {predictor.encoder_calls} encoder calls")
    print(frame.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
