from setuptools import find_packages, setup

setup(
    name="mvit_backbone",
    version="0.1.0",
    description="Multiscale Vision Transformers (MViTv1/v2) as a detectron2 backbone, "
    "with ImageNet and video classification",
    packages=find_packages(include=["mvit_backbone", "mvit_backbone.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "timm", "safetensors", "fvcore", "iopath", "pycocotools"],
)
